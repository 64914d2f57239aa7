// libFuzzer target: PyTorch checkpoints read without running them (`sdgen
// convert`): the ZIP directory, the pickle interpreter and the tensor views
// (read_torch_checkpoint), and the pickle interpreter alone on inputs that are
// not ZIP archives. Any input must either throw sdgen::Error or give tensors
// whose every reachable element lies inside the input.
#include <cstdint>
#include <cstdlib>

#include "sdgen/error.h"
#include "sdgen/pickle.h"
#include "sdgen/torch_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2 || data[0] != 'P' || data[1] != 'K') {
    try {
      sdgen::pickle::parse(data, size, "fuzz.pkl");
    } catch (const sdgen::Error&) {
    }
    return 0;
  }
  sdgen::TorchCheckpoint checkpoint;
  try {
    checkpoint = sdgen::read_torch_checkpoint(data, size, "fuzz.ckpt");
  } catch (const sdgen::Error&) {
    return 0;
  }
  for (const auto& t : checkpoint.tensors) {
    if (t.storage_begin > size || t.storage_bytes > size - t.storage_begin) std::abort();
    if (t.shape.size() != t.stride.size()) std::abort();
    if (t.numel() == 0) continue;
    // The first and the last element a view reaches (what the converter copies).
    uint64_t last = t.storage_offset;
    for (size_t d = 0; d < t.shape.size(); ++d)
      last += static_cast<uint64_t>(t.shape[d] - 1) * static_cast<uint64_t>(t.stride[d]);
    const uint64_t elem = sdgen::dtype_size(t.dtype);
    if ((last + 1) * elem > t.storage_bytes) std::abort();
    volatile uint8_t first_byte = data[t.storage_begin + t.storage_offset * elem];
    volatile uint8_t last_byte = data[t.storage_begin + (last + 1) * elem - 1];
    (void)first_byte;
    (void)last_byte;
  }
  return 0;
}
