// Generating a run's jobs: one at a time, or consecutive compatible
// prompt-file jobs together as one mixed-prompt UNet batch (--max-batch).
// Either way each image, its name, its PNG parameters and its --json line are
// what the job gives alone, and in file order.

#include <iostream>

#include "resources.h"
#include "runner.h"
#include "sdgen/interrupt.h"

namespace sdgen::cli {

int Runner::max_batch_images() const {
  // Standard input is generated as it arrives: a line never waits for the next.
  if (!file_mode_ || run_.prompt_file == "-") return 1;
  if (run_.max_batch > 0) return run_.max_batch;
  // CUDA: up to 8 images, fewer when the memory estimate says so (enqueue);
  // the CPU gains nothing from batching (docs/performance.md).
  return session_.device.is_cuda() ? kCudaDefaultMaxBatch : kCpuDefaultMaxBatch;
}

void Runner::enqueue(PendingJob pending) {
  const int limit = max_batch_images();
  auto images = [this] {
    int n = 0;
    for (const auto& p : pending_) n += p.job.request.batch_size;
    return n;
  };
  if (!pending_.empty()) {
    bool joins = images() + pending.job.request.batch_size <= limit &&
                 jobs_batch_mismatch(session_, pending_.front().job, pending.job).empty();
    if (joins && !run_.no_memory_check) {
      std::vector<const Job*> jobs;
      for (const auto& p : pending_) jobs.push_back(&p.job);
      jobs.push_back(&pending.job);
      joins = jobs_memory_problem(session_, jobs).empty();
    }
    if (!joins) flush_pending();
  }
  pending_.push_back(std::move(pending));
  if (images() >= limit) flush_pending();
}

void Runner::flush_pending() {
  if (pending_.empty()) return;
  std::vector<PendingJob> batch;
  batch.swap(pending_);
  // --fail-fast stops at the first image that cannot be written: nothing is
  // generated while one is being written.
  if (run_.fail_fast) wait_for_writes();
  if (stop_) return;
  if (interrupted()) {  // Ctrl-C while the previous batch was written
    stop_ = true;
    return;
  }
  generate_pending(batch);
}

void Runner::generate_pending(std::vector<PendingJob>& batch) {
  const GenerationRequest& first = batch.front().job.request;
  int images = 0;
  for (const auto& p : batch) images += p.images;
  std::string label = batch.front().label;
  if (batch.size() > 1) label += " + " + std::to_string(batch.size() - 1) + " more";
  progress_->begin(label, first.steps, images);
  const auto t0 = Clock::now();
  Progress* progress = progress_.get();
  const auto on_step = [progress](const StepInfo& info, const torch::Tensor&) {
    progress->step(info.index + 1, info.total);
    throw_if_interrupted();  // abandons the batch at this step boundary
  };
  std::vector<GenerationResult> results;
  try {
    if (batch.size() == 1) {
      results.push_back(generate_job(session_, batch.front().job, on_step));
    } else {
      std::vector<Job*> jobs;
      for (auto& p : batch) jobs.push_back(&p.job);
      results = generate_jobs(session_, jobs, on_step);
    }
  } catch (const Interrupted&) {
    progress_->end(false);
    stop_ = true;
    return;
  } catch (const std::exception& err) {
    progress_->end(false);
    if (batch.size() > 1) {
      // One job's failure (NaN latents, out of memory) fails the batch: each
      // job again alone, so that the others' images and the failing job's
      // error come out as without batching.
      for (auto& p : batch) {
        if (stop_) break;
        std::vector<PendingJob> one{std::move(p)};
        generate_pending(one);
      }
      return;
    }
    const PendingJob& p = batch.front();
    images_failed_ += static_cast<int64_t>(p.paths.size());
    // Out of memory: one line with the estimate and what to try.
    report(kExitGeneration, where(p.line),
           generation_error_text(err, *session_.model, memory_request(p.job.request)));
    return;
  }
  const double total_s = seconds(t0, Clock::now());
  progress_->end(true, results.front().timings.sampling_s);
  for (size_t b = 0; b < batch.size(); ++b) {
    const PendingJob& p = batch[b];
    for (size_t k = 0; k < p.paths.size(); ++k)
      write_image(p.job, results[b], p.positions[k], p.indices[k], p.line, p.paths[k], total_s);
  }
}

}  // namespace sdgen::cli
