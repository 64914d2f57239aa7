#include "sdgen/interrupt.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>

namespace sdgen {

namespace {

// Everything the handler touches: lock-free atomics and fixed buffers.
std::atomic<int> g_signals{0};
std::atomic<int> g_first_signal{0};
bool g_notice = false;
// Two buffers: a new path is written into the one not in use, then published
// by storing its index, so the handler never reads a half-written path.
constexpr size_t kMaxPath = 4096;
char g_temp_paths[2][kMaxPath];
std::atomic<int> g_temp_slot{-1};

static_assert(std::atomic<int>::is_always_lock_free, "signal handler needs lock-free atomics");

void write_stderr(const char* text) {
  const ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

extern "C" void on_signal(int sig) {
  const int saved_errno = errno;
  const int count = g_signals.fetch_add(1) + 1;
  if (count == 1) {
    g_first_signal.store(sig);
    if (g_notice)
      write_stderr(
          "\nsdgen: stopping after the current step (press Ctrl-C again to quit at once)\n");
    errno = saved_errno;
    return;
  }
  const int slot = g_temp_slot.load();
  if (slot >= 0) ::unlink(g_temp_paths[slot]);
  write_stderr("\nsdgen: interrupted, exiting at once\n");
  ::_exit(kInterruptExitCode);
}

}  // namespace

void install_interrupt_handlers(bool notice) {
  g_notice = notice;
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
}

bool interrupted() { return g_signals.load() > 0; }

int interrupt_signal() { return g_first_signal.load(); }

PendingTempFile::PendingTempFile(const std::string& path) {
  if (path.size() >= kMaxPath) return;  // not removable by the handler; never happens in practice
  const int slot = g_temp_slot.load() == 0 ? 1 : 0;
  std::memcpy(g_temp_paths[slot], path.c_str(), path.size() + 1);
  g_temp_slot.store(slot);
}

PendingTempFile::~PendingTempFile() { g_temp_slot.store(-1); }

const char* pending_temp_file() {
  const int slot = g_temp_slot.load();
  return slot >= 0 ? g_temp_paths[slot] : nullptr;
}

}  // namespace sdgen
