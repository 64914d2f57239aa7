#pragma once

// A thread that runs the tasks given to it in order while their giver goes
// on (issue 32): the command line's PNG encoding and file writes overlap the
// next batch's sampling instead of holding it up. `sdgen serve`'s model
// thread (serve_internal.h) is one too, waited for after each task.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace sdgen::cli {

class BackgroundWriter {
 public:
  // At most `capacity` tasks wait; submit blocks beyond that (memory stays bounded).
  explicit BackgroundWriter(size_t capacity);
  BackgroundWriter(const BackgroundWriter&) = delete;
  BackgroundWriter& operator=(const BackgroundWriter&) = delete;
  // Runs every task given, then stops.
  ~BackgroundWriter();
  // Queues `task` (the thread starts on the first call). A task must not throw.
  void submit(std::function<void()> task);
  // Returns once every task given so far has run.
  void wait_idle();

 private:
  void loop();
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::function<void()>> tasks_;
  size_t capacity_;
  bool busy_ = false, stop_ = false;
  std::thread thread_;
};

}  // namespace sdgen::cli
