#pragma once

// Matrix products on the CPU spread over libtorch's threads.
//
// sdgen gives OpenBLAS one thread per caller (init_cpu_runtime: its own
// thread pool spin-waited against libtorch's OpenMP pool), and libtorch 1.13
// makes one BLAS call for a Linear over all its rows and one per matrix of a
// bmm, so those products ran on one core while the others waited: in an fp32
// UNet step on 2 cores, a third of the time (issue 33). These functions split
// the rows over libtorch's OpenMP threads, one single-threaded BLAS call each,
// and compute attention per block of query rows without materialising the
// whole score matrix.

#include <functional>
#include <initializer_list>
#include <optional>

#include <ATen/core/Tensor.h>

namespace sdgen::nn {

// Whether this build spreads work over threads (compiled with OpenMP, which
// libtorch's at::parallel_for needs in the caller) and more than one thread
// is set.
bool cpu_parallel_kernels_enabled();

// How many per-thread buffers a kernel needs: at least one per thread that
// the OpenMP runtime this library calls may start (with pip's libtorch,
// which bundles its own libgomp, that runtime's count can differ from
// at::get_num_threads()); 1 where the kernels run on one thread.
int64_t cpu_worker_slots();

// This thread's buffer index inside a kernel's parallel region, checked
// against the kernel's slot count.
int64_t cpu_worker_slot(int64_t slots);

// Whether every defined tensor among these is a dense CPU tensor of `dtype`
// and none of them needs autograd (the kernels here have no backward);
// plain_fp32_cpu for fp32.
bool plain_cpu(std::initializer_list<const at::Tensor*> tensors, at::ScalarType dtype);
bool plain_fp32_cpu(std::initializer_list<const at::Tensor*> tensors);

// at::parallel_for(0, n, grain, body) with the caller's thread-local state
// (grad and inference mode) on every thread: OpenMP's workers do not inherit
// it, and libtorch 1.13's parallel_for does not pass it on. Runs body(0, n)
// on the calling thread where parallel_for would (one thread, nested).
void parallel_for_with_state(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& body);

// x [..., in] @ w[out, in]^T + b for fp32 CPU tensors, rows split over the
// threads; nullopt where it does not apply (another dtype or device, autograd,
// few rows, one thread), and the caller takes torch::linear.
std::optional<at::Tensor> linear_rows_parallel(const at::Tensor& x, const at::Tensor& w,
                                               const at::Tensor& b);

// softmax(q k^T / sqrt(d) [+ causal mask]) v for fp32 CPU q [B, H, Lq, D],
// k [B, H, Lk, D], v [B, H, Lk, Dv]; nullopt where it does not apply
// (another dtype or device, autograd).
std::optional<at::Tensor> attention_rows_parallel(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, bool causal);

}  // namespace sdgen::nn
