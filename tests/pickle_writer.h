#pragma once

// Test fixtures for `sdgen convert`: a tiny pickle writer (opcodes as
// Python's Lib/pickletools.py lists them), torch.save's tensor layout
// (torch/_utils.py `_rebuild_tensor_v2`, a persistent id ('storage',
// torch.FloatStorage, key, 'cpu', numel)) and a ZIP writer of STORED entries
// (PKWARE APPNOTE.TXT), ZIP64 on request. Used by test_convert and the
// bad-input table (fuzz/make_corpus.py writes the fuzzer's seeds the same way).

#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace sdgen::test {

class PickleWriter {
 public:
  explicit PickleWriter(int protocol = 2) {
    if (protocol >= 2) {
      out_ += '\x80';
      out_ += static_cast<char>(protocol);
    }
  }
  PickleWriter& op(char c) {
    out_ += c;
    return *this;
  }
  PickleWriter& raw(const std::string& bytes) {
    out_ += bytes;
    return *this;
  }
  PickleWriter& mark() { return op('('); }
  PickleWriter& none() { return op('N'); }
  PickleWriter& boolean(bool b) { return op(b ? '\x88' : '\x89'); }
  PickleWriter& str(const std::string& s) {  // BINUNICODE
    op('X');
    le(s.size(), 4);
    return raw(s);
  }
  PickleWriter& integer(int64_t v) {
    if (v >= 0 && v < 256) return op('K').le(static_cast<uint64_t>(v), 1);
    if (v >= 0 && v < 65536) return op('M').le(static_cast<uint64_t>(v), 2);
    if (v >= INT32_MIN && v <= INT32_MAX) return op('J').le(static_cast<uint32_t>(v), 4);
    return op('\x8a').le(8, 1).le(static_cast<uint64_t>(v), 8);  // LONG1
  }
  PickleWriter& floating(double d) {  // BINFLOAT, big-endian
    uint64_t bits = 0;
    std::memcpy(&bits, &d, 8);
    op('G');
    for (int i = 7; i >= 0; --i) out_ += static_cast<char>((bits >> (8 * i)) & 0xff);
    return *this;
  }
  PickleWriter& global(const std::string& module, const std::string& name) {
    return op('c').raw(module + "\n" + name + "\n");
  }
  PickleWriter& tuple_of(const std::vector<int64_t>& values) {
    mark();
    for (auto v : values) integer(v);
    return op('t');
  }
  PickleWriter& put(uint32_t index) { return op('r').le(index, 4); }  // LONG_BINPUT
  PickleWriter& get(uint32_t index) { return op('j').le(index, 4); }  // LONG_BINGET
  // torch._utils._rebuild_tensor_v2(persistent storage, offset, size, stride,
  // False, OrderedDict()), as torch.save writes every tensor.
  PickleWriter& tensor(const std::string& storage_type, const std::string& key, int64_t numel,
                       int64_t offset, const std::vector<int64_t>& size,
                       const std::vector<int64_t>& stride) {
    global("torch._utils", "_rebuild_tensor_v2").mark();
    mark().str("storage").global("torch", storage_type).str(key).str("cpu").integer(numel);
    op('t').op('Q');  // the persistent id tuple, BINPERSID
    integer(offset).tuple_of(size).tuple_of(stride).boolean(false);
    global("collections", "OrderedDict").op(')').op('R');
    return op('t').op('R');
  }
  // A __reduce__ payload: GLOBAL module.name called with (argument,).
  PickleWriter& call(const std::string& module, const std::string& name,
                     const std::string& argument) {
    return global(module, name).mark().str(argument).op('t').op('R');
  }
  std::string bytes() const { return out_ + "."; }  // STOP

  PickleWriter& le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_ += static_cast<char>((v >> (8 * i)) & 0xff);
    return *this;
  }

 private:
  std::string out_;
};

struct ZipOptions {
  bool zip64 = false;      // ZIP64 end records and extra fields
  std::string compressed;  // the entry marked as deflated (method 8)
};

// A ZIP archive of STORED entries, in order.
inline std::string zip_archive(const std::vector<std::pair<std::string, std::string>>& entries,
                               const ZipOptions& options = {}) {
  auto le = [](std::string& s, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
  };
  std::string out, dir;
  const bool z64 = options.zip64;
  for (const auto& [name, data] : entries) {
    const uint64_t offset = out.size();
    const uint32_t crc = static_cast<uint32_t>(
        ::crc32(0, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
    const uint16_t method = name == options.compressed ? 8 : 0;
    std::string extra;
    if (z64) {
      le(extra, 1, 2);
      le(extra, 24, 2);
      le(extra, data.size(), 8);
      le(extra, data.size(), 8);
      le(extra, offset, 8);
    }
    le(out, 0x04034b50, 4);
    le(out, 45, 2);
    le(out, 0, 2);
    le(out, method, 2);
    le(out, 0, 4);  // time, date
    le(out, crc, 4);
    le(out, z64 ? 0xffffffff : data.size(), 4);
    le(out, z64 ? 0xffffffff : data.size(), 4);
    le(out, name.size(), 2);
    le(out, 0, 2);
    out += name + data;

    le(dir, 0x02014b50, 4);
    le(dir, 45, 2);
    le(dir, 45, 2);
    le(dir, 0, 2);
    le(dir, method, 2);
    le(dir, 0, 4);
    le(dir, crc, 4);
    le(dir, z64 ? 0xffffffff : data.size(), 4);
    le(dir, z64 ? 0xffffffff : data.size(), 4);
    le(dir, name.size(), 2);
    le(dir, extra.size(), 2);
    le(dir, 0, 2);  // comment
    le(dir, 0, 2);  // disk
    le(dir, 0, 2);
    le(dir, 0, 4);
    le(dir, z64 ? 0xffffffff : offset, 4);
    dir += name + extra;
  }
  const uint64_t dir_offset = out.size();
  out += dir;
  if (z64) {
    const uint64_t record = out.size();
    le(out, 0x06064b50, 4);
    le(out, 44, 8);
    le(out, 45, 2);
    le(out, 45, 2);
    le(out, 0, 4);
    le(out, 0, 4);
    le(out, entries.size(), 8);
    le(out, entries.size(), 8);
    le(out, dir.size(), 8);
    le(out, dir_offset, 8);
    le(out, 0x07064b50, 4);
    le(out, 0, 4);
    le(out, record, 8);
    le(out, 1, 4);
  }
  le(out, 0x06054b50, 4);
  le(out, 0, 4);
  le(out, z64 ? 0xffff : entries.size(), 2);
  le(out, z64 ? 0xffff : entries.size(), 2);
  le(out, z64 ? 0xffffffff : dir.size(), 4);
  le(out, z64 ? 0xffffffff : dir_offset, 4);
  le(out, 0, 2);
  return out;
}

// A torch.save-style checkpoint: `prefix/data.pkl`, `prefix/data/<key>` for
// each storage, `prefix/version`.
inline std::string torch_checkpoint(
    const std::string& pickle, const std::vector<std::pair<std::string, std::string>>& storages,
    const ZipOptions& options = {}, const std::string& prefix = "archive") {
  std::vector<std::pair<std::string, std::string>> entries = {{prefix + "/data.pkl", pickle}};
  for (const auto& [key, bytes] : storages) entries.emplace_back(prefix + "/data/" + key, bytes);
  entries.emplace_back(prefix + "/version", "3\n");
  return zip_archive(entries, options);
}

// The pickle of {name: payload} where payload runs `module.name(argument)`
// when unpickled by Python: what a malicious checkpoint's __reduce__ writes.
inline std::string malicious_pickle(const std::string& module, const std::string& name,
                                    const std::string& argument) {
  PickleWriter w;
  w.op('}').mark().str("state_dict").call(module, name, argument).op('u');
  return w.bytes();
}

}  // namespace sdgen::test
