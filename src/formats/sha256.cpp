#include "sdgen/sha256.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "sdgen/error.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

// FIPS 180-4, section 4.2.2: the first 32 bits of the fractional parts of the
// cube roots of the first 64 primes.
constexpr uint32_t kRound[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

std::string to_hex(const uint8_t* bytes, size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  return out;
}

}  // namespace

Sha256::Sha256()
    : state_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19} {}

void Sha256::compress(const uint8_t* block) {
  uint32_t w[64];
  for (int i = 0; i < 16; ++i)
    w[i] = (uint32_t(block[4 * i]) << 24) | (uint32_t(block[4 * i + 1]) << 16) |
           (uint32_t(block[4 * i + 2]) << 8) | uint32_t(block[4 * i + 3]);
  for (int i = 16; i < 64; ++i) {
    const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3], e = state_[4], f = state_[5],
           g = state_[6], h = state_[7];
  for (int i = 0; i < 64; ++i) {
    const uint32_t s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
    const uint32_t ch = (e & f) ^ (~e & g);
    const uint32_t t1 = h + s1 + ch + kRound[i] + w[i];
    const uint32_t s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
    const uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
    const uint32_t t2 = s0 + maj;
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  state_[0] += a;
  state_[1] += b;
  state_[2] += c;
  state_[3] += d;
  state_[4] += e;
  state_[5] += f;
  state_[6] += g;
  state_[7] += h;
}

void Sha256::update(const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
  total_bytes_ += size;
  if (buffered_ > 0) {
    const size_t take = std::min(size, 64 - buffered_);
    std::memcpy(buffer_.data() + buffered_, p, take);
    buffered_ += take;
    p += take;
    size -= take;
    if (buffered_ < 64) return;
    compress(buffer_.data());
    buffered_ = 0;
  }
  for (; size >= 64; p += 64, size -= 64) compress(p);
  std::memcpy(buffer_.data(), p, size);
  buffered_ = size;
}

std::array<uint8_t, 32> Sha256::digest() {
  // Padding (FIPS 180-4, 5.1.1): 0x80, zeros to 56 mod 64, the bit length big-endian.
  const uint64_t bits = total_bytes_ * 8;
  const uint8_t one = 0x80;
  update(&one, 1);
  const uint8_t zero = 0;
  while (buffered_ != 56) update(&zero, 1);
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
  update(length, 8);
  std::array<uint8_t, 32> out;
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) out[4 * i + j] = static_cast<uint8_t>(state_[i] >> (24 - 8 * j));
  return out;
}

std::string Sha256::hex_digest() {
  const auto d = digest();
  return to_hex(d.data(), d.size());
}

std::string sha256_hex(const std::string& data) {
  Sha256 h;
  h.update(data);
  return h.hex_digest();
}

std::string sha256_file_hex(const std::string& path, uint64_t offset) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open for hashing: " + std::strerror(errno));
  if (offset > 0 && !in.seekg(static_cast<std::streamoff>(offset)))
    throw Error(path + ": cannot seek to byte " + std::to_string(offset) + " for hashing");
  Sha256 h;
  std::vector<char> buffer(4 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    if (in.gcount() > 0) h.update(buffer.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) throw Error(path + ": read error while hashing");
  return h.hex_digest();
}

std::string safetensors_data_sha256_hex(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open for hashing: " + std::strerror(errno));
  unsigned char n[8] = {};
  if (!in.read(reinterpret_cast<char*>(n), 8)) throw Error(path + ": too short to be safetensors");
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = (header << 8) | n[i];
  const uint64_t size = static_cast<uint64_t>(fs::file_size(path));
  if (header > size - 8) throw Error(path + ": header length runs past the end of the file");
  return sha256_file_hex(path, 8 + header);
}

std::string model_weights_file(const std::string& model_path) {
  std::error_code ec;
  const fs::path root(model_path);
  if (!fs::is_directory(root, ec)) return model_path;
  const fs::path unet = root / "unet";
  for (const char* name :
       {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"})
    if (fs::exists(unet / name, ec)) return (unet / name).string();
  // Any other safetensors file in unet/ (sharded or renamed), the first by name.
  std::vector<fs::path> found;
  if (fs::is_directory(unet, ec))
    for (const auto& e : fs::directory_iterator(unet, ec))
      if (e.path().extension() == ".safetensors") found.push_back(e.path());
  if (found.empty())
    throw Error(model_path + ": no UNet weights (unet/*.safetensors) to hash for the model hash");
  std::sort(found.begin(), found.end());
  return found.front().string();
}

std::string hash_cache_path() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg)
    return std::string(xdg) + "/sdgen/hashes.json";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::string(home) + "/.cache/sdgen/hashes.json";
  return "";
}

std::string model_sha256(const std::string& model_path, bool use_cache) {
  const std::string file = model_weights_file(model_path);
  std::error_code ec;
  const fs::path canonical = fs::canonical(file, ec);
  if (ec) throw Error(file + ": cannot hash: " + ec.message());
  const auto size = fs::file_size(canonical, ec);
  if (ec) throw Error(file + ": cannot hash: " + ec.message());
  const auto mtime = fs::last_write_time(canonical, ec).time_since_epoch().count();
  const std::string cache = use_cache ? hash_cache_path() : "";

  nlohmann::json entries = nlohmann::json::object();
  if (!cache.empty()) {
    std::ifstream in(cache);
    if (in) {
      try {
        entries = nlohmann::json::parse(in);
        if (!entries.is_object()) entries = nlohmann::json::object();
      } catch (const std::exception&) {
        entries = nlohmann::json::object();  // a damaged cache is rebuilt
      }
    }
    const auto it = entries.find(canonical.string());
    if (it != entries.end() && it->is_object() && it->value("size", uint64_t(0)) == size &&
        it->value("mtime", int64_t(0)) == static_cast<int64_t>(mtime) &&
        it->value("sha256", std::string()).size() == 64)
      return (*it)["sha256"].get<std::string>();
  }
  const std::string hex = sha256_file_hex(canonical.string());
  if (!cache.empty()) {
    entries[canonical.string()] = {
        {"size", size}, {"mtime", static_cast<int64_t>(mtime)}, {"sha256", hex}};
    // Written to a temporary file and renamed, so concurrent runs (shards on one
    // node) never read half a cache; the last writer wins, which loses nothing
    // that cannot be recomputed.
    const fs::path target(cache);
    fs::create_directories(target.parent_path(), ec);
    const fs::path tmp = target.parent_path() / (".hashes.json.tmp" + std::to_string(::getpid()));
    {
      std::ofstream out(tmp);
      if (out) out << entries.dump(1) << "\n";
    }
    fs::rename(tmp, target, ec);
    if (ec) fs::remove(tmp, ec);
  }
  return hex;
}

}  // namespace sdgen
