#pragma once

// SHA-256 (FIPS 180-4) and the model hash A1111 writes as "Model hash": the
// first 10 hex digits of the SHA-256 of the checkpoint file. Hashing a 2-7 GB
// file takes seconds, so results are cached by path, size and mtime in
// $XDG_CACHE_HOME/sdgen/hashes.json (~/.cache/sdgen/hashes.json).

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace sdgen {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  void update(const std::string& data) { update(data.data(), data.size()); }
  // Finishes the hash; the object must not be updated afterwards.
  std::array<uint8_t, 32> digest();
  std::string hex_digest();  // 64 lower-case hex digits

 private:
  void compress(const uint8_t* block);
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

std::string sha256_hex(const std::string& data);
// Streams the file; throws Error naming it when it cannot be read.
std::string sha256_file_hex(const std::string& path, uint64_t offset = 0);
// A1111's "addnet" hash of a .safetensors file (hashes.addnet_hash_safetensors,
// what its "Lora hashes" field shows the first 12 digits of): the SHA-256 of
// the bytes after the 8-byte header length and the header.
std::string safetensors_data_sha256_hex(const std::string& path);

// The file whose hash identifies a model: the checkpoint itself, or for a
// diffusers folder its UNet weights (unet/diffusion_pytorch_model*.safetensors).
std::string model_weights_file(const std::string& model_path);

// Full SHA-256 hex of model_weights_file(model_path), looked up in / added to
// the hash cache (keyed by canonical path, size and mtime) unless use_cache is
// false. An unreadable or unwritable cache is ignored.
std::string model_sha256(const std::string& model_path, bool use_cache = true);
// Where the cache lives.
std::string hash_cache_path();

}  // namespace sdgen
