// The ZIP container of torch.save's checkpoints: the central directory only
// (PKWARE APPNOTE.TXT sections 4.3.7 local header, 4.3.12 central directory,
// 4.3.14-4.3.16 ZIP64 end records, 4.5.3 ZIP64 extra field). torch's
// PyTorchStreamWriter (caffe2/serialize/inline_container.cc, miniz) writes
// every entry STORED, so compressed entries are refused instead of inflated.

#include <algorithm>

#include "sdgen/error.h"
#include "sdgen/torch_checkpoint.h"

namespace sdgen {

namespace {

constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEndRecord = 0x06054b50;
constexpr uint32_t kZip64EndRecord = 0x06064b50;
constexpr uint32_t kZip64Locator = 0x07064b50;

// Little-endian reads at checked offsets of the archive image.
class ZipBytes {
 public:
  ZipBytes(const uint8_t* data, uint64_t size, const std::string& label)
      : data_(data), size_(size), label_(label) {}
  Error fail(const std::string& why) const {
    return Error(label_ + ": not a valid checkpoint archive: " + why);
  }
  void need(uint64_t offset, uint64_t n, const char* what) const {
    if (offset > size_ || n > size_ - offset)
      throw fail(std::string(what) + " at byte " + std::to_string(offset) +
                 " runs past the end of the file (" + std::to_string(size_) +
                 " bytes; truncated?)");
  }
  uint64_t le(uint64_t offset, int bytes) const {
    need(offset, static_cast<uint64_t>(bytes), "a field");
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | data_[offset + static_cast<uint64_t>(i)];
    return v;
  }
  uint64_t size() const { return size_; }
  const uint8_t* data() const { return data_; }

 private:
  const uint8_t* data_;
  uint64_t size_;
  const std::string& label_;
};

// The end-of-central-directory record: within the last 64 KiB + 22 bytes.
uint64_t find_end_record(const ZipBytes& z) {
  if (z.size() < 22) throw z.fail("the file is too short to be a ZIP archive");
  const uint64_t lowest = z.size() > 22 + 0xffff ? z.size() - 22 - 0xffff : 0;
  for (uint64_t at = z.size() - 22 + 1; at-- > lowest;)
    if (z.le(at, 4) == kEndRecord) return at;
  throw z.fail("no ZIP end-of-central-directory record (not a ZIP archive, or truncated)");
}

}  // namespace

std::vector<ZipEntry> read_zip_entries(const uint8_t* data, uint64_t size,
                                       const std::string& label) {
  const ZipBytes z(data, size, label);
  const uint64_t end = find_end_record(z);
  uint64_t count = z.le(end + 10, 2);
  uint64_t dir_size = z.le(end + 12, 4);
  uint64_t dir_offset = z.le(end + 16, 4);
  if (count == 0xffff || dir_size == 0xffffffff || dir_offset == 0xffffffff) {
    // ZIP64: the locator just before the end record points at the ZIP64 end record.
    if (end < 20 || z.le(end - 20, 4) != kZip64Locator)
      throw z.fail("ZIP64 fields without a ZIP64 end-of-central-directory locator");
    const uint64_t record = z.le(end - 20 + 8, 8);
    z.need(record, 56, "the ZIP64 end-of-central-directory record");
    if (z.le(record, 4) != kZip64EndRecord)
      throw z.fail("the ZIP64 end-of-central-directory record is missing");
    count = z.le(record + 32, 8);
    dir_size = z.le(record + 40, 8);
    dir_offset = z.le(record + 48, 8);
  }
  z.need(dir_offset, dir_size, "the central directory");
  if (count > dir_size / 46)
    throw z.fail(std::to_string(count) + " entries do not fit a central directory of " +
                 std::to_string(dir_size) + " bytes");

  std::vector<ZipEntry> entries;
  entries.reserve(count);
  uint64_t at = dir_offset;
  const uint64_t dir_end = dir_offset + dir_size;
  for (uint64_t i = 0; i < count; ++i) {
    if (at > dir_end || dir_end - at < 46 || z.le(at, 4) != kCentralHeader)
      throw z.fail("central directory entry " + std::to_string(i) + " is malformed");
    const uint64_t flags = z.le(at + 8, 2);
    const uint64_t method = z.le(at + 10, 2);
    uint64_t compressed = z.le(at + 20, 4);
    uint64_t uncompressed = z.le(at + 24, 4);
    const uint64_t name_len = z.le(at + 28, 2);
    const uint64_t extra_len = z.le(at + 30, 2);
    const uint64_t comment_len = z.le(at + 32, 2);
    uint64_t local = z.le(at + 42, 4);
    const uint64_t record_len = 46 + name_len + extra_len + comment_len;
    if (dir_end - at < record_len)
      throw z.fail("central directory entry " + std::to_string(i) + " runs past the directory");
    ZipEntry entry;
    entry.name.assign(reinterpret_cast<const char*>(z.data() + at + 46), name_len);
    const std::string where = "entry '" + entry.name + "': ";
    // ZIP64 extra field: the 8-byte values of the fields set to 0xffffffff, in order.
    for (uint64_t e = at + 46 + name_len; e + 4 <= at + 46 + name_len + extra_len;) {
      const uint64_t id = z.le(e, 2), len = z.le(e + 2, 2);
      if (e + 4 + len > at + 46 + name_len + extra_len) throw z.fail(where + "bad extra field");
      if (id == 0x0001) {
        uint64_t p = e + 4;
        for (uint64_t* field : {&uncompressed, &compressed, &local}) {
          if (*field != 0xffffffff) continue;
          if (p + 8 > e + 4 + len) throw z.fail(where + "short ZIP64 extra field");
          *field = z.le(p, 8);
          p += 8;
        }
      }
      e += 4 + len;
    }
    if ((flags & 0x1) != 0) throw z.fail(where + "is encrypted");
    if (method != 0)
      throw Error(label + ": entry '" + entry.name + "' is compressed (ZIP method " +
                  std::to_string(method) +
                  "); torch.save stores its entries uncompressed, so this archive was "
                  "repacked: unpack it and pack it again without compression (zip -0)");
    if (compressed != uncompressed)
      throw z.fail(where + "stored size " + std::to_string(compressed) + " differs from its size " +
                   std::to_string(uncompressed));
    z.need(local, 30, "a local file header");
    if (z.le(local, 4) != kLocalHeader) throw z.fail(where + "no local file header");
    const uint64_t begin = local + 30 + z.le(local + 26, 2) + z.le(local + 28, 2);
    z.need(begin, uncompressed, ("the data of entry '" + entry.name + "'").c_str());
    entry.offset = begin;
    entry.size = uncompressed;
    entries.push_back(std::move(entry));
    at += record_len;
  }
  return entries;
}

}  // namespace sdgen
