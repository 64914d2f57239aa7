#include "sdgen/image_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include "stb_image_write.h"  // a SYSTEM include (CMakeLists.txt): its warnings are not ours

#include "sdgen/error.h"
#include "sdgen/interrupt.h"

namespace fs = std::filesystem;

namespace sdgen {

namespace {

uint32_t get_u32(const std::string& s, size_t pos) {
  return (static_cast<uint32_t>(static_cast<uint8_t>(s[pos])) << 24) |
         (static_cast<uint32_t>(static_cast<uint8_t>(s[pos + 1])) << 16) |
         (static_cast<uint32_t>(static_cast<uint8_t>(s[pos + 2])) << 8) |
         static_cast<uint32_t>(static_cast<uint8_t>(s[pos + 3]));
}

void append_bytes(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), size);
}

}  // namespace

std::string encode_png(const torch::Tensor& image, const PngText& text) {
  if (image.dim() != 3 || image.scalar_type() != torch::kUInt8 || image.size(2) < 1 ||
      image.size(2) > 4)
    throw Error("encode_png: expected a uint8 [H, W, C] image, C in 1..4");
  auto pixels = image.to(torch::kCPU).contiguous();
  const int h = static_cast<int>(pixels.size(0)), w = static_cast<int>(pixels.size(1)),
            c = static_cast<int>(pixels.size(2));
  std::string png;
  if (!stbi_write_png_to_func(append_bytes, &png, w, h, c, pixels.data_ptr<uint8_t>(), w * c))
    throw Error("encode_png: PNG encoding failed");
  if (text.empty()) return png;
  // stb writes signature + IHDR (8 + 25 bytes) first; the text chunks (tEXt,
  // or iTXt when not Latin-1: png_text_chunk) go right after it, as Pillow
  // writes them before the image data.
  const size_t after_ihdr = 8 + 12 + get_u32(png, 8);
  std::string chunks;
  for (const auto& [key, value] : text) chunks += png_text_chunk(key, value);
  png.insert(after_ihdr, chunks);
  return png;
}

void write_png(const std::string& path, const torch::Tensor& image, const PngText& text) {
  const std::string png = encode_png(image, text);
  check_output_path(path);
  const fs::path target(path);
  const fs::path tmp = target.parent_path() /
                       ("." + target.filename().string() + ".tmp" + std::to_string(::getpid()));
  const PendingTempFile pending(tmp.string());  // a second Ctrl-C removes it (interrupt.h)
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(path + ": cannot write: " + std::strerror(errno));
    out.write(png.data(), static_cast<std::streamsize>(png.size()));
    out.flush();
    if (!out) {
      out.close();
      std::error_code ec;
      fs::remove(tmp, ec);
      throw Error(path + ": write failed (disk full?)");
    }
  }
  std::error_code ec;
  fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw Error(path + ": cannot move the finished PNG into place: " + ec.message());
  }
}

PngImage read_png(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open image: " + std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  DecodedPng png = decode_png(bytes, path);
  PngImage out;
  out.pixels =
      torch::from_blob(png.pixels.data(), {png.height, png.width, png.channels}, torch::kUInt8)
          .clone();
  out.text = std::move(png.text);
  return out;
}

torch::Tensor to_unit_images(const torch::Tensor& decoded) {
  return (decoded.to(torch::kFloat32) / 2 + 0.5)
      .clamp(0, 1)
      .permute({0, 2, 3, 1})
      .cpu()
      .contiguous();
}

torch::Tensor to_uint8_images(const torch::Tensor& decoded) {
  return (to_unit_images(decoded) * 255).round().to(torch::kUInt8);
}

void check_output_path(const std::string& path, bool create_dirs) {
  if (path.empty()) throw Error("output path is empty");
  const fs::path target(path);
  std::error_code ec;
  if (fs::is_directory(target, ec))
    throw Error(path + ": output path is a directory; give a file name such as " +
                (target / "out.png").string());
  fs::path parent = target.parent_path();
  if (parent.empty()) parent = ".";
  if (!fs::exists(parent, ec)) {
    if (!create_dirs) throw Error(path + ": output folder " + parent.string() + " does not exist");
    fs::create_directories(parent, ec);
    if (ec)
      throw Error(path + ": cannot create output folder " + parent.string() + ": " + ec.message());
  }
  if (!fs::is_directory(parent, ec))
    throw Error(path + ": " + parent.string() + " is not a folder");
  if (::access(parent.c_str(), W_OK) != 0)
    throw Error(path + ": output folder " + parent.string() + " is not writable");
  // access() says yes to root everywhere, and read-only or special file
  // systems (/proc) only refuse the actual creation: try it, as write_png will.
  const fs::path probe = parent / (".sdgen-probe" + std::to_string(::getpid()));
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno != EEXIST)
      throw Error(path + ": output folder " + parent.string() + " is not writable (" +
                  std::strerror(errno) + ")");
  } else {
    ::close(fd);
    ::unlink(probe.c_str());
  }
  if (fs::exists(target, ec) && ::access(target.c_str(), W_OK) != 0)
    throw Error(path + ": existing file is not writable");
}

}  // namespace sdgen
