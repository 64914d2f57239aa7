#include "sdgen/safetensors_header.h"

#include <algorithm>
#include <limits>

#include <nlohmann/json.hpp>

#include "sdgen/error.h"

namespace sdgen {

namespace {

struct DTypeEntry {
  const char* name;
  DType dtype;
  size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {"F32", DType::F32, 4},   {"F16", DType::F16, 2}, {"BF16", DType::BF16, 2},
    {"F64", DType::F64, 8},   {"I64", DType::I64, 8}, {"I32", DType::I32, 4},
    {"U8", DType::U8, 1},     {"I16", DType::I16, 2}, {"I8", DType::I8, 1},
    {"BOOL", DType::BOOL, 1},
};

const DTypeEntry& entry(DType dtype) {
  for (const auto& e : kDTypes)
    if (e.dtype == dtype) return e;
  throw Error("internal: unknown dtype");
}

}  // namespace

DType dtype_from_string(const std::string& name) {
  for (const auto& e : kDTypes)
    if (name == e.name) return e.dtype;
  throw Error("unsupported dtype '" + name +
              "' (known: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)");
}
const char* dtype_name(DType dtype) { return entry(dtype).name; }
size_t dtype_size(DType dtype) { return entry(dtype).size; }

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (auto d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

SafeTensorsHeader parse_safetensors_header(const uint8_t* data, uint64_t size,
                                           const std::string& label) {
  const auto fail = [&](const std::string& why) -> Error {
    return Error(label + ": not a valid safetensors file: " + why);
  };
  SafeTensorsHeader out;
  if (size < 8)
    throw fail("file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  if (header_len > kMaxSafeTensorsHeaderBytes)
    throw fail("header length " + std::to_string(header_len) + " exceeds the " +
               std::to_string(kMaxSafeTensorsHeaderBytes) + "-byte limit");
  if (header_len > size - 8)
    throw fail("header length " + std::to_string(header_len) + " is larger than the file (" +
               std::to_string(size) + " bytes; truncated?)");
  out.data_start = 8 + header_len;
  const uint64_t data_size = size - out.data_start;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(data + 8, data + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    throw fail(std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!header.is_object()) throw fail("header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& value = it.value();
    if (name == "__metadata__") {
      if (!value.is_object()) throw fail("__metadata__ is not an object");
      for (auto m = value.begin(); m != value.end(); ++m) {
        if (!m.value().is_string())
          throw fail("__metadata__ value '" + m.key() + "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "': ";
    if (!value.is_object()) throw fail(where + "entry is not an object");
    if (!value.contains("dtype") || !value["dtype"].is_string())
      throw fail(where + "missing string 'dtype'");
    if (!value.contains("shape") || !value["shape"].is_array())
      throw fail(where + "missing array 'shape'");
    if (!value.contains("data_offsets") || !value["data_offsets"].is_array() ||
        value["data_offsets"].size() != 2)
      throw fail(where + "'data_offsets' must be an array of two integers");
    TensorInfo info;
    info.name = name;
    try {
      info.dtype = dtype_from_string(value["dtype"].get<std::string>());
    } catch (const Error& e) {
      throw fail(where + e.what());
    }
    uint64_t numel = 1;
    for (const auto& d : value["shape"]) {
      if (!d.is_number_unsigned())
        throw fail(where + "shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / dim / 8))
        throw fail(where + "shape is too large");
      numel *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    for (const auto& o : value["data_offsets"])
      if (!o.is_number_unsigned()) throw fail(where + "data_offsets must be non-negative integers");
    info.begin = value["data_offsets"][0].get<uint64_t>();
    info.end = value["data_offsets"][1].get<uint64_t>();
    if (info.begin > info.end) throw fail(where + "data_offsets begin > end");
    if (info.end > data_size)
      throw fail(where + "data_offsets [" + std::to_string(info.begin) + ", " +
                 std::to_string(info.end) + "] lie outside the data section (" +
                 std::to_string(data_size) + " bytes; truncated?)");
    const uint64_t expected = numel * dtype_size(info.dtype);
    if (info.end - info.begin != expected)
      throw fail(where + "holds " + std::to_string(info.end - info.begin) + " bytes but dtype " +
                 dtype_name(info.dtype) + " and shape need " + std::to_string(expected));
    out.tensors.emplace(name, std::move(info));
  }
  std::vector<const TensorInfo*> by_offset;
  for (const auto& kv : out.tensors)
    if (kv.second.end > kv.second.begin) by_offset.push_back(&kv.second);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      throw fail("tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name +
                 "' overlap");
  return out;
}

}  // namespace sdgen
