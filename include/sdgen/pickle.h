#pragma once

// A code-free reader of Python pickles, for PyTorch checkpoints (`data.pkl`
// of torch.save's zip format). It interprets the opcodes of pickle protocols
// 0-5 itself (Python's Lib/pickletools.py is the reference table) and never
// calls anything: a GLOBAL is looked up in an allow-list equal to what torch's
// own `weights_only` unpickler accepts (torch/_weights_only_unpickler.py,
// `_get_allowed_globals`) and becomes a symbolic value; REDUCE / NEWOBJ /
// BUILD on such a value are recorded as a `call` node for the caller
// (torch_checkpoint.h) to interpret. Any other global is refused with an Error
// naming it. Plain containers (OrderedDict, Counter, set, torch.Size) are
// built as containers directly.
//
// Untrusted input: every length is checked against the bytes left, the
// object count, MARK nesting and memo size are bounded, and nothing recurses
// over the input's depth (values live in one arena and refer to each other by
// index, so cycles and deep chains are harmless).

#include <cstdint>
#include <string>
#include <vector>

namespace sdgen::pickle {

enum class Kind : uint8_t {
  none,
  boolean,
  integer,      // fits in int64
  big_integer,  // LONG1/LONG4/LONG beyond int64: kept only as "not representable"
  floating,
  string,  // str (and protocol-0/2 byte strings, decoded as torch.load does)
  bytes,   // bytes / bytearray
  list,
  tuple,
  dict,        // dict, collections.OrderedDict, collections.Counter
  set,         // set, frozenset
  global,      // an allowed global, symbolic (text = "module.name")
  call,        // REDUCE/NEWOBJ of an allowed global: items = {callee, args}
  persistent,  // BINPERSID/PERSID: items = {pid}
};

using Id = uint32_t;

struct Value {
  Kind kind = Kind::none;
  bool boolean = false;
  int64_t integer = 0;
  double floating = 0;
  std::string text;       // string, bytes, global's "module.name"
  std::vector<Id> items;  // list/tuple/set elements; dict: key0, value0, key1, ...
  Id state = 0;           // call: BUILD's state (0: none; id 0 is always None)
  bool has_state = false;
  uint32_t depth = 0;  // containers: 1 + the deepest item's depth when it was added
};

// The limits a pickle must stay within; the defaults fit checkpoints of
// tens of GB (SDXL's state dict needs ~60,000 objects).
struct Limits {
  uint64_t max_objects = 8'000'000;  // values created (incl. memo entries)
  uint64_t max_marks = 1000;         // MARK nesting
  uint32_t max_depth = 1000;         // containers within containers
  uint64_t max_stack = 4'000'000;    // values on the stack at once
};

class Pickle {
 public:
  const Value& at(Id id) const { return values_.at(id); }
  Id root() const { return root_; }
  size_t size() const { return values_.size(); }

 private:
  friend class Reader;
  std::vector<Value> values_;
  Id root_ = 0;
};

// Parses the pickle `data` (size bytes) up to its STOP. `label` starts every
// Error message (the file's name). Refused globals throw
// "<label>: refused pickle global 'module.name' (...); nothing was executed".
Pickle parse(const uint8_t* data, uint64_t size, const std::string& label,
             const Limits& limits = {});

// True for the names torch's weights_only unpickler allows ("torch.FloatStorage",
// "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", ...).
bool is_allowed_global(const std::string& full_name);

}  // namespace sdgen::pickle
