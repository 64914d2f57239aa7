// What torch.load would rebuild from a checkpoint's pickle, interpreted
// symbolically: storages from persistent ids (torch/serialization.py, `_load`'s
// persistent_load: ('storage', storage_type, key, location, numel)), tensors
// from the rebuild functions (torch/_utils.py: `_rebuild_tensor_v2(storage,
// storage_offset, size, stride, requires_grad, backward_hooks, metadata=None)`,
// `_rebuild_tensor_v3(..., dtype, metadata=None)`, `_rebuild_parameter(data,
// requires_grad, backward_hooks)`; torch/_tensor.py `_rebuild_from_type_v2(func,
// new_type, args, state)`), and the dicts around them flattened to names.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <set>

#include "sdgen/error.h"
#include "sdgen/pickle.h"
#include "sdgen/torch_checkpoint.h"

namespace sdgen {

using pickle::Id;
using pickle::Kind;

namespace {

constexpr int kMaxDims = 64;
constexpr int kMaxFlattenDepth = 64;
constexpr uint64_t kMaxFlattenVisits = 10'000'000;

// torch.<Type>Storage -> element type (torch/storage.py, _dtype_to_storage_type_map).
const std::map<std::string, DType>& storage_types() {
  static const std::map<std::string, DType> types = {
      {"DoubleStorage", DType::F64},    {"FloatStorage", DType::F32}, {"HalfStorage", DType::F16},
      {"BFloat16Storage", DType::BF16}, {"LongStorage", DType::I64},  {"IntStorage", DType::I32},
      {"ShortStorage", DType::I16},     {"CharStorage", DType::I8},   {"ByteStorage", DType::U8},
      {"BoolStorage", DType::BOOL}};
  return types;
}

// torch.<dtype> globals (_rebuild_tensor_v3's dtype argument).
const std::map<std::string, DType>& torch_dtypes() {
  static const std::map<std::string, DType> types = {
      {"torch.float64", DType::F64},   {"torch.float32", DType::F32}, {"torch.float16", DType::F16},
      {"torch.bfloat16", DType::BF16}, {"torch.int64", DType::I64},   {"torch.int32", DType::I32},
      {"torch.int16", DType::I16},     {"torch.int8", DType::I8},     {"torch.uint8", DType::U8},
      {"torch.bool", DType::BOOL}};
  return types;
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return true;
  *out = a * b;
  return false;
}

std::string kind_name(Kind kind) {
  switch (kind) {
    case Kind::none:
      return "None";
    case Kind::boolean:
      return "a bool";
    case Kind::integer:
    case Kind::big_integer:
      return "an int";
    case Kind::floating:
      return "a float";
    case Kind::string:
      return "a string";
    case Kind::bytes:
      return "bytes";
    case Kind::list:
      return "a list";
    case Kind::tuple:
      return "a tuple";
    case Kind::dict:
      return "a dict";
    case Kind::set:
      return "a set";
    case Kind::global:
      return "a global";
    case Kind::call:
      return "an object";
    case Kind::persistent:
      return "a storage";
  }
  return "a value";
}

// Python's repr of a float as metadata text ("0.0001", "1e-05", "2.0").
std::string float_text(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  const auto [p, ec] = std::to_chars(buf, buf + sizeof buf, d);
  std::string s(buf, ec == std::errc() ? p : buf);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

class CheckpointReader {
 public:
  CheckpointReader(const uint8_t* data, uint64_t size, const std::string& label)
      : data_(data), size_(size), label_(label) {}

  TorchCheckpoint run() {
    // torch.save before 1.6 (torch/serialization.py, _legacy_save): a pickle
    // of MAGIC_NUMBER 0x1950a86a20f9469cfc6c first; older still, a tar file.
    static const uint8_t kLegacyMagic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c,
                                           0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    if (size_ >= sizeof kLegacyMagic &&
        std::equal(kLegacyMagic, kLegacyMagic + sizeof kLegacyMagic, data_))
      throw fail(
          "a checkpoint in torch.save's legacy format (before torch 1.6), which sdgen "
          "does not read; re-save it with torch >= 1.6, or convert it elsewhere");
    if (size_ >= 262 &&
        std::equal(data_ + 257, data_ + 262, reinterpret_cast<const uint8_t*>("ustar")))
      throw fail("a tar archive (torch.save's oldest format), which sdgen does not read");
    for (auto& e : read_zip_entries(data_, size_, label_)) entries_[e.name] = e;
    std::string prefix;
    bool found = false;
    for (const auto& [name, e] : entries_) {
      const auto slash = name.find('/');
      if (slash != std::string::npos && name.compare(slash, std::string::npos, "/data.pkl") == 0) {
        prefix = name.substr(0, slash + 1);
        found = true;
        break;
      }
    }
    if (!found) {
      for (const auto& [name, e] : entries_)
        if (name.find("constants.pkl") != std::string::npos)
          throw Error(label_ +
                      ": a TorchScript archive (torch.jit.save), not a torch.save checkpoint");
      throw Error(label_ +
                  ": a ZIP archive without <prefix>/data.pkl: not a torch.save checkpoint");
    }
    prefix_ = prefix;
    if (const auto it = entries_.find(prefix + "byteorder"); it != entries_.end()) {
      const std::string order(reinterpret_cast<const char*>(data_ + it->second.offset),
                              std::min<uint64_t>(it->second.size, 16));
      if (order != "little") throw Error(label_ + ": big-endian checkpoints are not supported");
    }
    const ZipEntry& pkl = entries_.at(prefix + "data.pkl");
    pickle_ = pickle::parse(data_ + pkl.offset, pkl.size, label_);
    flatten();
    return std::move(out_);
  }

 private:
  Error fail(const std::string& why) const { return Error(label_ + ": " + why); }
  const pickle::Value& at(Id id) const { return pickle_.at(id); }
  bool is_global(Id id, const std::string& name) const {
    return at(id).kind == Kind::global && at(id).text == name;
  }
  int64_t integer(Id id, const std::string& where) const {
    if (at(id).kind != Kind::integer)
      throw fail(where + " is " + kind_name(at(id).kind) + ", not an int");
    return at(id).integer;
  }
  std::string string_or_bytes(Id id, const std::string& where) const {
    if (at(id).kind != Kind::string && at(id).kind != Kind::bytes)
      throw fail(where + " is " + kind_name(at(id).kind) + ", not a string");
    return at(id).text;
  }
  std::vector<int64_t> int_tuple(Id id, const std::string& where) const {
    const auto& v = at(id);
    if (v.kind != Kind::tuple && v.kind != Kind::list)
      throw fail(where + " is " + kind_name(v.kind) + ", not a tuple");
    if (v.items.size() > kMaxDims) throw fail(where + " has more than 64 dimensions");
    std::vector<int64_t> out;
    for (Id item : v.items) {
      const int64_t n = integer(item, where);
      if (n < 0) throw fail(where + " holds a negative number");
      out.push_back(n);
    }
    return out;
  }

  // A rebuilt tensor: which callee, with which arguments; `name` for messages.
  bool is_tensor(Id id) const {
    const auto& v = at(id);
    if (v.kind != Kind::call) return false;
    const std::string& f = at(v.items[0]).text;
    return f.rfind("torch._utils._rebuild_", 0) == 0 ||
           f == "torch._tensor._rebuild_from_type_v2" || f == "torch.nn.parameter.Parameter";
  }
  CheckpointTensor tensor(Id id, const std::string& name) const {
    Id callee = at(id).items[0];
    std::vector<Id> args = at(at(id).items[1]).items;
    const std::string where = "tensor '" + name + "'";
    // Parameters and tensor subclasses wrap the plain rebuild (a few levels at most).
    for (int unwrap = 0;; ++unwrap) {
      if (unwrap > 4) throw fail(where + ": rebuild functions nested too deep");
      const std::string& f = at(callee).text;
      if (f == "torch._utils._rebuild_parameter" ||
          f == "torch._utils._rebuild_parameter_with_state" ||
          f == "torch.nn.parameter.Parameter") {
        if (args.empty() || !is_tensor(args[0])) throw fail(where + ": " + f + " without a tensor");
        const Id data = args[0];
        callee = at(data).items[0];
        args = at(at(data).items[1]).items;
        continue;
      }
      if (f == "torch._tensor._rebuild_from_type_v2") {
        if (args.size() < 3 || at(args[0]).kind != Kind::global || at(args[2]).kind != Kind::tuple)
          throw fail(where + ": unexpected arguments of " + f);
        if (!is_global(args[1], "torch.Tensor") &&
            !is_global(args[1], "torch.nn.parameter.Parameter"))
          throw fail(where + ": tensor subclass " + at(args[1]).text + " is not supported");
        callee = args[0];
        args = at(args[2]).items;
        continue;
      }
      break;
    }
    const std::string& f = at(callee).text;
    const bool v3 = f == "torch._utils._rebuild_tensor_v3";
    if (f != "torch._utils._rebuild_tensor_v2" && f != "torch._utils._rebuild_tensor" && !v3)
      throw fail(where + ": " + f +
                 " (quantized, sparse, meta or device tensors) is not supported");
    if (args.size() < (v3 ? 7u : 4u)) throw fail(where + ": too few arguments for " + f);

    CheckpointTensor t;
    t.name = name;
    storage(args[0], where, &t);
    const int64_t offset = integer(args[1], where + " storage offset");
    if (offset < 0) throw fail(where + ": negative storage offset");
    t.storage_offset = static_cast<uint64_t>(offset);
    t.shape = int_tuple(args[2], where + " size");
    t.stride = int_tuple(args[3], where + " stride");
    if (t.shape.size() != t.stride.size())
      throw fail(where + ": " + std::to_string(t.shape.size()) + " sizes but " +
                 std::to_string(t.stride.size()) + " strides");
    if (v3) {
      if (at(args[6]).kind != Kind::global || torch_dtypes().count(at(args[6]).text) == 0)
        throw fail(where + ": unsupported dtype " + at(args[6]).text);
      t.dtype = torch_dtypes().at(at(args[6]).text);
    }
    check_extent(t, where);
    return t;
  }

  // The persistent id ('storage', torch.FloatStorage, key, location, numel).
  void storage(Id id, const std::string& where, CheckpointTensor* t) const {
    if (at(id).kind != Kind::persistent) throw fail(where + ": its storage is not a persistent id");
    const auto& pid = at(at(id).items[0]);
    if (pid.kind != Kind::tuple || pid.items.size() < 5 ||
        string_or_bytes(pid.items[0], where + " persistent id") != "storage")
      throw fail(where + ": unexpected persistent id (not a storage)");
    const auto& type = at(pid.items[1]);
    DType dtype = DType::U8;
    if (type.kind != Kind::global) throw fail(where + ": storage type is not a global");
    if (type.text != "torch.storage.UntypedStorage") {
      const auto dot = type.text.rfind('.');
      const auto it = storage_types().find(type.text.substr(dot + 1));
      if (it == storage_types().end())
        throw fail(where + ": storage type " + type.text + " is not supported");
      dtype = it->second;
    }
    const std::string key = string_or_bytes(pid.items[2], where + " storage key");
    const int64_t numel = integer(pid.items[4], where + " storage size");
    if (numel < 0) throw fail(where + ": negative storage size");
    const std::string entry = prefix_ + "data/" + key;
    const auto it = entries_.find(entry);
    if (it == entries_.end()) throw fail(where + ": storage '" + entry + "' is not in the archive");
    uint64_t bytes = 0;
    if (mul_overflows(static_cast<uint64_t>(numel), dtype_size(dtype), &bytes) ||
        bytes > it->second.size)
      throw fail(where + ": storage '" + entry + "' holds " + std::to_string(it->second.size) +
                 " bytes but is declared as " + std::to_string(numel) + " elements of " +
                 std::to_string(dtype_size(dtype)) + " bytes");
    t->dtype = dtype;
    t->storage = entry;
    t->storage_begin = it->second.offset;
    t->storage_bytes = bytes;
  }

  // Every element the view reaches must lie inside its storage.
  void check_extent(const CheckpointTensor& t, const std::string& where) const {
    const uint64_t elem = dtype_size(t.dtype);
    const uint64_t capacity = t.storage_bytes / elem;
    uint64_t numel = 1, last = t.storage_offset;
    bool empty = false;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      const auto size = static_cast<uint64_t>(t.shape[d]);
      if (size == 0) empty = true;
      uint64_t reach = 0;
      if (mul_overflows(numel, size, &numel) ||
          (size > 0 && mul_overflows(size - 1, static_cast<uint64_t>(t.stride[d]), &reach)) ||
          last + reach < last)
        throw fail(where + ": shape and strides are too large");
      last += reach;
    }
    if (t.storage_offset > capacity)
      throw fail(where + ": storage offset " + std::to_string(t.storage_offset) +
                 " is past the end of '" + t.storage + "' (" + std::to_string(capacity) +
                 " elements)");
    if (!empty && last >= capacity)
      throw fail(where + ": needs element " + std::to_string(last) + " of '" + t.storage +
                 "', which holds " + std::to_string(capacity) + " elements (" +
                 std::to_string(t.storage_bytes) + " bytes)");
    uint64_t bytes = 0;
    if (mul_overflows(numel, 8, &bytes)) throw fail(where + ": too large");
  }

  // A dict's entries with text keys, later duplicates replacing earlier ones
  // (Python's dict semantics).
  std::vector<std::pair<std::string, Id>> dict_items(Id id, const std::string& name) {
    std::vector<std::pair<std::string, Id>> out;
    std::map<std::string, size_t> index;
    const auto& items = at(id).items;
    for (size_t i = 0; i + 1 < items.size(); i += 2) {
      const auto& k = at(items[i]);
      std::string key;
      if (k.kind == Kind::string)
        key = k.text;
      else if (k.kind == Kind::integer)
        key = std::to_string(k.integer);
      else {
        out_.dropped.push_back(join(name, "<" + kind_name(k.kind) + " key>"));
        continue;
      }
      const auto [it, fresh] = index.emplace(key, out.size());
      if (fresh)
        out.emplace_back(key, items[i + 1]);
      else
        out[it->second].second = items[i + 1];
    }
    return out;
  }
  static std::string join(const std::string& a, const std::string& b) {
    return a.empty() ? b : a + "." + b;
  }
  bool holds_structure(Id id) const {
    for (Id item : at(id).items)
      if (is_tensor(item) || at(item).kind == Kind::dict) return true;
    return false;
  }

  // Walks the object tree with an explicit stack (no recursion over the
  // input's depth); tensors and scalars are collected by flattened name.
  void flatten() {
    const Id root = pickle_.root();
    if (at(root).kind != Kind::dict)
      throw fail("the checkpoint holds " + kind_name(at(root).kind) +
                 ", not a dict of tensors (a state dict)");
    struct Item {
      Id id;
      std::string name;
      int depth;
      bool metadata_only;
    };
    std::vector<Item> todo;
    const auto top = dict_items(root, "");
    const auto sd = std::find_if(top.begin(), top.end(), [&](const auto& kv) {
      return kv.first == "state_dict" && at(kv.second).kind == Kind::dict;
    });
    // Pushed in reverse so that entries come out in the pickle's order.
    for (auto it = top.rbegin(); it != top.rend(); ++it) {
      if (sd != top.end() && it->second == sd->second && it->first == "state_dict") {
        const auto inner = dict_items(sd->second, "");
        for (auto in = inner.rbegin(); in != inner.rend(); ++in)
          todo.push_back({in->second, in->first, 1, false});
      } else {
        todo.push_back({it->second, it->first, 1, sd != top.end()});
      }
    }
    uint64_t visits = 0;
    std::set<std::string> names;
    while (!todo.empty()) {
      Item item = std::move(todo.back());
      todo.pop_back();
      if (++visits > kMaxFlattenVisits)
        throw fail("more than " + std::to_string(kMaxFlattenVisits) + " entries");
      if (item.depth > kMaxFlattenDepth)
        throw fail("entry '" + item.name.substr(0, 200) + "...' is nested deeper than " +
                   std::to_string(kMaxFlattenDepth) + " levels");
      const auto& v = at(item.id);
      switch (v.kind) {
        case Kind::string:
          out_.metadata[item.name] = v.text;
          continue;
        case Kind::integer:
          out_.metadata[item.name] = std::to_string(v.integer);
          continue;
        case Kind::boolean:
          out_.metadata[item.name] = v.boolean ? "True" : "False";
          continue;
        case Kind::floating:
          out_.metadata[item.name] = float_text(v.floating);
          continue;
        default:
          break;
      }
      if (item.metadata_only) {
        out_.dropped.push_back(item.name);
        continue;
      }
      if (is_tensor(item.id)) {
        if (item.name == "__metadata__") throw fail("a tensor is named __metadata__");
        if (!names.insert(item.name).second)
          throw fail("two tensors are named '" + item.name + "'");
        out_.tensors.push_back(tensor(item.id, item.name));
        continue;
      }
      if (v.kind == Kind::dict) {
        const auto inner = dict_items(item.id, item.name);
        for (auto in = inner.rbegin(); in != inner.rend(); ++in)
          todo.push_back({in->second, join(item.name, in->first), item.depth + 1, false});
        continue;
      }
      if ((v.kind == Kind::list || v.kind == Kind::tuple) && holds_structure(item.id)) {
        for (size_t i = v.items.size(); i-- > 0;)
          todo.push_back({v.items[i], join(item.name, std::to_string(i)), item.depth + 1, false});
        continue;
      }
      out_.dropped.push_back(item.name);
    }
  }

  const uint8_t* data_;
  uint64_t size_;
  const std::string& label_;
  std::map<std::string, ZipEntry> entries_;
  std::string prefix_;
  pickle::Pickle pickle_;
  TorchCheckpoint out_;
};

}  // namespace

uint64_t CheckpointTensor::numel() const {
  uint64_t n = 1;
  for (auto d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

bool CheckpointTensor::contiguous() const {
  int64_t expected = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] != 1 && stride[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

TorchCheckpoint read_torch_checkpoint(const uint8_t* data, uint64_t size,
                                      const std::string& label) {
  return CheckpointReader(data, size, label).run();
}

}  // namespace sdgen
