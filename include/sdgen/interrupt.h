#pragma once

// Ctrl-C (SIGINT) and SIGTERM for long runs, and the temporary file that a
// signal must not leave behind.
//
// After install_interrupt_handlers() the first signal only sets a flag:
// interrupted() turns true and the program stops at its next safe point (the
// CLI: the next sampling step), removing nothing that was finished. A second
// signal ends the process at once with exit code 130, after unlinking the
// temporary file being written at that moment, if any (write_png registers
// it). The handler only calls write(), unlink() and _exit(), which are
// async-signal-safe.

#include <string>

namespace sdgen {

// Installs the handlers for SIGINT and SIGTERM (SA_RESTART). When `notice`,
// the first signal writes one line to stderr saying that sdgen stops after
// the current step (useful on a terminal, where steps can take seconds).
void install_interrupt_handlers(bool notice);

// True once SIGINT or SIGTERM arrived (after install_interrupt_handlers).
bool interrupted();
// The signal that arrived first (SIGINT, SIGTERM), 0 if none.
int interrupt_signal();
// Exit code of an interrupted run: 128 + SIGINT, for SIGTERM too.
constexpr int kInterruptExitCode = 130;

// The temporary file being written, removed by a second signal. One file at a
// time (the last registered); the RAII guard clears it when it goes out of
// scope, whether the file was renamed into place or removed.
class PendingTempFile {
 public:
  explicit PendingTempFile(const std::string& path);
  ~PendingTempFile();
  PendingTempFile(const PendingTempFile&) = delete;
  PendingTempFile& operator=(const PendingTempFile&) = delete;
};
// The path registered now, or nullptr (async-signal-safe).
const char* pending_temp_file();

}  // namespace sdgen
