#include "sdgen/pickle.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <set>
#include <unordered_map>

#include "sdgen/error.h"
#include "utf8.h"

namespace sdgen::pickle {

namespace {

// Names as "module.name". The lists follow torch/_weights_only_unpickler.py
// (`_get_allowed_globals`, `_tensor_rebuild_functions`) and the types it
// iterates (torch.storage._dtype_to_storage_type_map, _new_dtypes,
// torch._tensor_classes, torch._storage_classes).
const std::set<std::string>& allowed_globals() {
  static const std::set<std::string> names = [] {
    std::set<std::string> n = {
        "collections.OrderedDict",
        "collections.Counter",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.set",
        "builtins.complex",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._utils._rebuild_qtensor",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_sparse_tensor",
        "torch._utils._rebuild_meta_tensor_no_storage",
        "torch._utils._rebuild_wrapper_subclass",
        "torch._utils._rebuild_device_tensor_from_numpy",
        "torch._utils._rebuild_device_tensor_from_cpu_tensor",
        "torch._tensor._rebuild_from_type_v2",
        "torch.per_tensor_affine",
        "torch.per_tensor_symmetric",
        "torch.per_channel_affine",
        "torch.per_channel_symmetric",
        "torch.per_channel_affine_float_qparams",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
    };
    for (const char* dtype : {"float32",
                              "float64",
                              "float16",
                              "bfloat16",
                              "complex32",
                              "complex64",
                              "complex128",
                              "uint8",
                              "int8",
                              "int16",
                              "int32",
                              "int64",
                              "bool",
                              "qint8",
                              "quint8",
                              "qint32",
                              "quint4x2",
                              "quint2x4",
                              "float8_e4m3fn",
                              "float8_e5m2",
                              "float8_e4m3fnuz",
                              "float8_e5m2fnuz",
                              "float8_e8m0fnu",
                              "float4_e2m1fn_x2",
                              "uint16",
                              "uint32",
                              "uint64",
                              "bits1x8",
                              "bits2x4",
                              "bits4x2",
                              "bits8",
                              "bits16"})
      n.insert(std::string("torch.") + dtype);
    for (int bits = 1; bits <= 7; ++bits) {
      n.insert("torch.uint" + std::to_string(bits));
      n.insert("torch.int" + std::to_string(bits));
    }
    for (const char* type :
         {"Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
          "ComplexDouble", "ComplexFloat", "QUInt8", "QInt8", "QInt32", "QUInt4x2", "QUInt2x4"}) {
      n.insert(std::string("torch.") + type + "Storage");
      n.insert(std::string("torch.cuda.") + type + "Storage");
    }
    for (const char* type :
         {"Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool"})
      for (const char* module : {"torch.", "torch.cuda.", "torch.sparse.", "torch.cuda.sparse."})
        n.insert(std::string(module) + type + "Tensor");
    return n;
  }();
  return names;
}

// A name from the input, safe to print on one line.
std::string pickle_printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s.substr(0, 200)) out.push_back(c >= 0x20 && c < 0x7f ? char(c) : '?');
  if (s.size() > 200) out += "...";
  return out;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

bool is_allowed_global(const std::string& full_name) {
  return allowed_globals().count(full_name) > 0;
}

// The interpreter. Opcode names and arguments: Python's Lib/pickletools.py.
class Reader {
 public:
  Reader(const uint8_t* data, uint64_t size, const std::string& label, const Limits& limits)
      : data_(data), size_(size), label_(label), limits_(limits) {}

  Pickle run() {
    make(Value{});  // id 0: None
    while (true) {
      if (pos_ >= size_) throw fail("truncated: the data ends before the STOP opcode");
      op_pos_ = pos_;
      const uint8_t op = data_[pos_++];
      if (op == '.') {  // STOP
        out_.root_ = pop();
        return std::move(out_);
      }
      step(op);
    }
  }

 private:
  Error fail(const std::string& why) const {
    return Error(label_ + ": not a valid pickle (at byte " + std::to_string(op_pos_) + "): " + why);
  }

  // ---- input ----
  const uint8_t* take(uint64_t n) {
    if (n > size_ - pos_)
      throw fail("truncated: needs " + std::to_string(n) + " bytes, " +
                 std::to_string(size_ - pos_) + " left");
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  uint64_t uint_le(int bytes) {
    const uint8_t* p = take(static_cast<uint64_t>(bytes));
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
    return v;
  }
  // One protocol-0 argument line, without its "\n".
  std::string line() {
    const void* nl = std::memchr(data_ + pos_, '\n', size_ - pos_);
    if (nl == nullptr) throw fail("truncated: an argument line has no end");
    const uint64_t end = static_cast<const uint8_t*>(nl) - data_;
    std::string s(reinterpret_cast<const char*>(data_ + pos_), end - pos_);
    pos_ = end + 1;
    return s;
  }
  std::string text(uint64_t n) {
    const uint8_t* p = take(n);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  uint64_t length(int bytes) {
    const uint64_t n = uint_le(bytes);
    if (n > size_ - pos_)
      throw fail("a " + std::to_string(n) + "-byte string runs past the end of the data (" +
                 std::to_string(size_ - pos_) + " bytes left)");
    return n;
  }

  // ---- values and the stack ----
  Id make(Value v) {
    if (out_.values_.size() >= limits_.max_objects)
      throw fail("more than " + std::to_string(limits_.max_objects) + " objects");
    out_.values_.push_back(std::move(v));
    return static_cast<Id>(out_.values_.size() - 1);
  }
  Value& at(Id id) { return out_.values_[id]; }
  Id make_kind(Kind kind) {
    Value v;
    v.kind = kind;
    return make(std::move(v));
  }
  Id make_text(Kind kind, std::string s) {
    Value v;
    v.kind = kind;
    v.text = std::move(s);
    return make(std::move(v));
  }
  Id make_int(int64_t i) {
    Value v;
    v.kind = Kind::integer;
    v.integer = i;
    return make(std::move(v));
  }
  Id make_bool(bool b) {
    Value v;
    v.kind = Kind::boolean;
    v.boolean = b;
    return make(std::move(v));
  }
  Id make_container(Kind kind, std::vector<Id> items) {
    add_items(items.size());
    Value v;
    v.kind = kind;
    v.depth = 1;
    for (Id item : items) v.depth = std::max(v.depth, at(item).depth + 1);
    check_depth(v.depth);
    v.items = std::move(items);
    return make(std::move(v));
  }
  // Nesting as containers are built (an upper bound is not needed: nothing
  // here recurses, and the consumer has its own limit); a chain of 100,000
  // lists is refused here already, with a clear message.
  void check_depth(uint32_t depth) const {
    if (depth > limits_.max_depth)
      throw fail("nested deeper than " + std::to_string(limits_.max_depth) + " levels");
  }
  // `parent` now holds `child`.
  Value& deepen(Id parent, Id child) {
    Value& p = at(parent);
    p.depth = std::max(p.depth, at(child).depth + 1);
    check_depth(p.depth);
    return p;
  }
  // Container slots count against the object limit too (DUP+APPEND loops).
  void add_items(uint64_t n) {
    items_ += n;
    if (items_ > 4 * limits_.max_objects)
      throw fail("more than " + std::to_string(4 * limits_.max_objects) + " container items");
  }
  void push(Id id) {
    if (stack_.size() >= limits_.max_stack)
      throw fail("more than " + std::to_string(limits_.max_stack) + " values on the stack");
    stack_.push_back(id);
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  Id pop() {
    if (stack_.size() <= floor()) throw fail("stack underflow");
    const Id id = stack_.back();
    stack_.pop_back();
    return id;
  }
  Id top() const {
    if (stack_.size() <= floor()) throw fail("stack underflow");
    return stack_.back();
  }
  std::vector<Id> pop_mark() {
    if (marks_.empty()) throw fail("no MARK to pop to");
    std::vector<Id> items(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()),
                          stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  Value& expect(Id id, Kind kind, const char* what) {
    if (at(id).kind != kind) throw fail(std::string(what) + " on a value of the wrong type");
    return at(id);
  }

  // ---- memo ----
  void put(uint64_t index) {
    if (memo_.size() >= limits_.max_objects && memo_.count(index) == 0)
      throw fail("more than " + std::to_string(limits_.max_objects) + " memo entries");
    memo_[index] = top();
  }
  void get(uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) throw fail("memo index " + std::to_string(index) + " was never stored");
    push(it->second);
  }

  // ---- numbers ----
  // Decimal integer text (INT, LONG, GET/PUT lines).
  Id decimal(std::string s, bool long_suffix) {
    if (long_suffix && !s.empty() && s.back() == 'L') s.pop_back();
    int64_t v = 0;
    const char* b = s.data();
    const char* e = b + s.size();
    if (b != e && *b == '+') ++b;
    const auto [p, ec] = std::from_chars(b, e, v);
    if (ec == std::errc::result_out_of_range) {
      bool digits = true;
      for (const char* c = b + (b != e && *b == '-'); c < e; ++c)
        digits = digits && *c >= '0' && *c <= '9';
      if (digits) return make_kind(Kind::big_integer);
    }
    if (ec != std::errc() || p != e || b == e)
      throw fail("bad integer '" + pickle_printable(s) + "'");
    return make_int(v);
  }
  uint64_t memo_index(const std::string& s) {
    uint64_t v = 0;
    const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size() || s.empty())
      throw fail("bad memo index '" + pickle_printable(s) + "'");
    return v;
  }
  // Two's complement little-endian (LONG1, LONG4; pickle.decode_long).
  Id long_bytes(uint64_t n) {
    const uint8_t* p = take(n);
    if (n == 0) return make_int(0);
    const bool negative = (p[n - 1] & 0x80) != 0;
    for (uint64_t i = 8; i < n; ++i)
      if (p[i] != (negative ? 0xff : 0x00)) return make_kind(Kind::big_integer);
    uint64_t v = negative ? ~uint64_t{0} : 0;
    for (uint64_t i = std::min<uint64_t>(n, 8); i-- > 0;) v = (v << 8) | p[i];
    if (n >= 8 && ((v >> 63) != 0) != negative) return make_kind(Kind::big_integer);
    return make_int(static_cast<int64_t>(v));
  }
  Id make_float(double d) {
    Value v;
    v.kind = Kind::floating;
    v.floating = d;
    return make(std::move(v));
  }

  // ---- strings ----
  // STRING's argument: a quoted Python 2 repr (codecs.escape_decode).
  std::string quoted(const std::string& s) {
    if (s.size() < 2 || s.front() != s.back() || (s.front() != '\'' && s.front() != '"'))
      throw fail("the STRING opcode argument must be quoted");
    std::string out;
    for (size_t i = 1; i + 1 < s.size(); ++i) {
      if (s[i] != '\\' || i + 2 >= s.size()) {
        out.push_back(s[i]);
        continue;
      }
      const char c = s[++i];
      switch (c) {
        case 'n':
          out.push_back('\n');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 'a':
          out.push_back('\a');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'v':
          out.push_back('\v');
          break;
        case '\\':
        case '\'':
        case '"':
          out.push_back(c);
          break;
        case '\n':
          break;
        case 'x': {
          const int hi = i + 2 < s.size() - 1 ? hex_digit(s[i + 1]) : -1;
          const int lo = hi >= 0 ? hex_digit(s[i + 2]) : -1;
          if (lo < 0) throw fail("bad \\x escape in a STRING");
          out.push_back(static_cast<char>(hi * 16 + lo));
          i += 2;
          break;
        }
        default:
          if (c >= '0' && c <= '7') {
            int v = c - '0';
            for (int k = 0; k < 2 && i + 2 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++k)
              v = v * 8 + (s[++i] - '0');
            out.push_back(static_cast<char>(v & 0xff));
          } else {
            out.push_back('\\');
            out.push_back(c);
          }
      }
    }
    return out;
  }
  // UNICODE's argument: raw-unicode-escape (\uXXXX, \UXXXXXXXX, else latin-1).
  std::string raw_unicode(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      const size_t digits = i + 1 < s.size() && s[i] == '\\' ? (s[i + 1] == 'u'   ? 4
                                                                : s[i + 1] == 'U' ? 8
                                                                                  : 0)
                                                             : 0;
      if (digits == 0) {
        append_utf8(static_cast<unsigned char>(s[i]), out);
        continue;
      }
      if (i + 2 + digits > s.size()) throw fail("truncated \\u escape in a UNICODE string");
      uint32_t cp = 0;
      for (size_t k = 0; k < digits; ++k) {
        const int d = hex_digit(s[i + 2 + k]);
        if (d < 0) throw fail("bad \\u escape in a UNICODE string");
        cp = cp * 16 + static_cast<uint32_t>(d);
      }
      if (cp > 0x10ffff) throw fail("code point out of range in a UNICODE string");
      append_utf8(cp, out);
      i += 1 + digits;
    }
    return out;
  }
  // _codecs.encode(text, "latin1"): how protocol 2 pickles bytes objects.
  std::string latin1(const std::string& utf8) {
    std::string out;
    for (const char32_t cp : decode_utf8(utf8)) {
      if (cp > 0xff) throw fail("_codecs.encode of a character outside latin-1");
      out.push_back(static_cast<char>(cp));
    }
    return out;
  }

  // ---- globals and calls ----
  void global(std::string module, const std::string& name) {
    // Python 2 module names, as torch/_utils.py's IMPORT_MAPPING maps them.
    if (module == "__builtin__") module = "builtins";
    const std::string full = module + "." + name;
    if (!is_allowed_global(full))
      throw Error(label_ + ": refused pickle global '" + pickle_printable(full) +
                  "' (only tensor rebuild functions, storages and plain containers are "
                  "allowed); nothing was executed");
    push(make_text(Kind::global, full));
  }
  // REDUCE / NEWOBJ of `callee` with the tuple `args`: plain containers are
  // built, everything else stays a symbolic call.
  Id call(Id callee, Id args) {
    if (at(callee).kind != Kind::global)
      throw fail("a call of something that is not an allowed global; nothing was executed");
    if (at(args).kind != Kind::tuple) throw fail("call arguments are not a tuple");
    const std::string name = at(callee).text;
    const std::vector<Id> a = at(args).items;
    if (name == "collections.OrderedDict" || name == "collections.Counter") {
      if (a.empty()) return make_container(Kind::dict, {});
      if (a.size() == 1 && at(a[0]).kind == Kind::dict)
        return make_container(Kind::dict, at(a[0]).items);
      if (a.size() == 1 && (at(a[0]).kind == Kind::list || at(a[0]).kind == Kind::tuple)) {
        std::vector<Id> items;
        for (Id pair : at(a[0]).items) {
          const Value& p = at(pair);
          if ((p.kind != Kind::tuple && p.kind != Kind::list) || p.items.size() != 2)
            throw fail(name + " from items that are not pairs");
          items.push_back(p.items[0]);
          items.push_back(p.items[1]);
        }
        return make_container(Kind::dict, std::move(items));
      }
      throw fail(name + " with unexpected arguments");
    }
    if (name == "builtins.set" || name == "torch.Size") {
      const Kind kind = name == "torch.Size" ? Kind::tuple : Kind::set;
      if (a.empty()) return make_container(kind, {});
      const Kind k = at(a[0]).kind;
      if (a.size() == 1 && (k == Kind::list || k == Kind::tuple || k == Kind::set))
        return make_container(kind, at(a[0]).items);
      throw fail(name + " with unexpected arguments");
    }
    if (name == "_codecs.encode") {
      if (a.size() == 2 && at(a[0]).kind == Kind::string && at(a[1]).kind == Kind::string &&
          (at(a[1]).text == "latin1" || at(a[1]).text == "latin-1"))
        return make_text(Kind::bytes, latin1(at(a[0]).text));
      throw fail("_codecs.encode with unexpected arguments");
    }
    if (name == "builtins.bytearray") {
      if (a.empty()) return make_text(Kind::bytes, "");
      if (a.size() == 1 && at(a[0]).kind == Kind::bytes)
        return make_text(Kind::bytes, at(a[0]).text);
    }
    return make_container(Kind::call, {callee, args});
  }

  void step(uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        const uint64_t proto = uint_le(1);
        if (proto > 5) throw fail("unsupported pickle protocol " + std::to_string(proto));
        return;
      }
      case 0x95:
        take(8);
        return;  // FRAME: a length hint only
      case '(':  // MARK
        if (marks_.size() >= limits_.max_marks)
          throw fail("nested deeper than " + std::to_string(limits_.max_marks) + " levels");
        marks_.push_back(stack_.size());
        return;
      case '0':  // POP (pops a MARK when the stack above it is empty, as pickle.py does)
        if (stack_.size() > floor())
          stack_.pop_back();
        else
          pop_mark();
        return;
      case '1':
        pop_mark();
        return;  // POP_MARK
      case '2':
        push(top());
        return;  // DUP

      // ---- numbers ----
      case 'N':
        push(0);
        return;  // NONE
      case 0x88:
        push(make_bool(true));
        return;  // NEWTRUE
      case 0x89:
        push(make_bool(false));
        return;    // NEWFALSE
      case 'I': {  // INT: decimal, or 00 / 01 for False / True
        const std::string s = line();
        if (s == "00" || s == "01")
          push(make_bool(s == "01"));
        else
          push(decimal(s, false));
        return;
      }
      case 'L':
        push(decimal(line(), true));
        return;  // LONG
      case 'J':
        push(make_int(static_cast<int32_t>(static_cast<uint32_t>(uint_le(4)))));
        return;
      case 'K':
        push(make_int(static_cast<int64_t>(uint_le(1))));
        return;  // BININT1
      case 'M':
        push(make_int(static_cast<int64_t>(uint_le(2))));
        return;  // BININT2
      case 0x8a:
        push(long_bytes(uint_le(1)));
        return;     // LONG1
      case 0x8b: {  // LONG4
        const int64_t n = static_cast<int32_t>(static_cast<uint32_t>(uint_le(4)));
        if (n < 0) throw fail("negative LONG4 length");
        push(long_bytes(static_cast<uint64_t>(n)));
        return;
      }
      case 'F': {  // FLOAT: repr text
        const std::string s = line();
        double d = 0;
        const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
        if (ec != std::errc() || p != s.data() + s.size())
          throw fail("bad float '" + pickle_printable(s) + "'");
        push(make_float(d));
        return;
      }
      case 'G': {  // BINFLOAT: big-endian IEEE 754 double
        const uint8_t* p = take(8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | p[i];
        double d = 0;
        std::memcpy(&d, &bits, 8);
        push(make_float(d));
        return;
      }

      // ---- strings and bytes ----
      case 'S':
        push(make_text(Kind::string, quoted(line())));
        return;  // STRING
      case 'V':
        push(make_text(Kind::string, raw_unicode(line())));
        return;    // UNICODE
      case 'T': {  // BINSTRING: signed 4-byte length
        const uint64_t n = uint_le(4);
        if (n > 0x7fffffff) throw fail("negative BINSTRING length");
        if (n > size_ - pos_)
          throw fail("a " + std::to_string(n) + "-byte string runs past the end of the data");
        push(make_text(Kind::string, text(n)));
        return;
      }
      case 'U':
        push(make_text(Kind::string, text(length(1))));
        return;  // SHORT_BINSTRING
      case 'X':
        push(make_text(Kind::string, text(length(4))));
        return;  // BINUNICODE
      case 0x8c:
        push(make_text(Kind::string, text(length(1))));
        return;  // SHORT_BINUNICODE
      case 0x8d:
        push(make_text(Kind::string, text(length(8))));
        return;  // BINUNICODE8
      case 'B':
        push(make_text(Kind::bytes, text(length(4))));
        return;  // BINBYTES
      case 'C':
        push(make_text(Kind::bytes, text(length(1))));
        return;  // SHORT_BINBYTES
      case 0x8e:
        push(make_text(Kind::bytes, text(length(8))));
        return;  // BINBYTES8
      case 0x96:
        push(make_text(Kind::bytes, text(length(8))));
        return;  // BYTEARRAY8

      // ---- containers ----
      case '}':
        push(make_container(Kind::dict, {}));
        return;  // EMPTY_DICT
      case ']':
        push(make_container(Kind::list, {}));
        return;  // EMPTY_LIST
      case ')':
        push(make_container(Kind::tuple, {}));
        return;  // EMPTY_TUPLE
      case 0x8f:
        push(make_container(Kind::set, {}));
        return;    // EMPTY_SET
      case 'd': {  // DICT
        std::vector<Id> items = pop_mark();
        if (items.size() % 2 != 0) throw fail("DICT with an odd number of items");
        push(make_container(Kind::dict, std::move(items)));
        return;
      }
      case 'l':
        push(make_container(Kind::list, pop_mark()));
        return;  // LIST
      case 't':
        push(make_container(Kind::tuple, pop_mark()));
        return;  // TUPLE
      case 0x91:
        push(make_container(Kind::set, pop_mark()));
        return;  // FROZENSET
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1/2/3
        const size_t n = op - 0x84;
        std::vector<Id> items(n);
        for (size_t i = n; i-- > 0;) items[i] = pop();
        push(make_container(Kind::tuple, std::move(items)));
        return;
      }
      case 'a': {  // APPEND
        const Id v = pop();
        add_items(1);
        expect(top(), Kind::list, "APPEND");
        deepen(top(), v).items.push_back(v);
        return;
      }
      case 'e':    // APPENDS
      case 0x90:   // ADDITEMS
      case 'u': {  // SETITEMS
        const std::vector<Id> items = pop_mark();
        const Kind kind = op == 'e' ? Kind::list : op == 'u' ? Kind::dict : Kind::set;
        if (kind == Kind::dict && items.size() % 2 != 0)
          throw fail("SETITEMS with an odd number of items");
        add_items(items.size());
        expect(top(), kind, op == 'e' ? "APPENDS" : op == 'u' ? "SETITEMS" : "ADDITEMS");
        for (Id item : items) deepen(top(), item);
        auto& target = at(top()).items;
        target.insert(target.end(), items.begin(), items.end());
        return;
      }
      case 's': {  // SETITEM
        const Id v = pop();
        const Id k = pop();
        add_items(2);
        expect(top(), Kind::dict, "SETITEM");
        deepen(top(), k);
        deepen(top(), v).items.push_back(k);
        at(top()).items.push_back(v);
        return;
      }

      // ---- globals, calls, objects ----
      case 'c': {  // GLOBAL: module and name lines
        std::string module = line();
        const std::string name = line();
        global(std::move(module), name);
        return;
      }
      case 0x93: {  // STACK_GLOBAL
        const Id name = pop();
        const Id module = pop();
        if (at(name).kind != Kind::string || at(module).kind != Kind::string)
          throw fail("STACK_GLOBAL needs two strings");
        global(at(module).text, at(name).text);
        return;
      }
      case 'i': {  // INST: module and name lines, arguments since the MARK
        std::string module = line();
        const std::string name = line();
        global(std::move(module), name);
        const Id cls = pop();
        const Id args = make_container(Kind::tuple, pop_mark());
        push(call(cls, args));
        return;
      }
      case 'o': {  // OBJ: class and arguments since the MARK
        std::vector<Id> items = pop_mark();
        if (items.empty()) throw fail("OBJ without a class");
        const Id cls = items.front();
        const Id args =
            make_container(Kind::tuple, std::vector<Id>(items.begin() + 1, items.end()));
        push(call(cls, args));
        return;
      }
      case 'R': {  // REDUCE
        const Id args = pop();
        const Id callee = pop();
        push(call(callee, args));
        return;
      }
      case 0x81: {  // NEWOBJ
        const Id args = pop();
        const Id cls = pop();
        push(call(cls, args));
        return;
      }
      case 0x92: {  // NEWOBJ_EX
        const Id kwargs = pop();
        const Id args = pop();
        const Id cls = pop();
        if (at(kwargs).kind != Kind::dict || !at(kwargs).items.empty())
          throw fail("NEWOBJ_EX with keyword arguments");
        push(call(cls, args));
        return;
      }
      case 'b': {  // BUILD: state for a rebuilt object; a dict's attributes are ignored
        const Id state = pop();
        Value& inst = at(top());
        if (inst.kind == Kind::call) {
          deepen(top(), state);
          inst.state = state;
          inst.has_state = true;
        } else if (inst.kind != Kind::dict) {
          throw fail("BUILD on a value that is neither a rebuilt object nor a dict");
        }
        return;
      }
      case 'P': {  // PERSID
        const Id pid = make_text(Kind::string, line());
        push(make_container(Kind::persistent, {pid}));
        return;
      }
      case 'Q': {  // BINPERSID
        const Id pid = pop();
        push(make_container(Kind::persistent, {pid}));
        return;
      }

      // ---- memo ----
      case 'g':
        get(memo_index(line()));
        return;  // GET
      case 'h':
        get(uint_le(1));
        return;  // BINGET
      case 'j':
        get(uint_le(4));
        return;  // LONG_BINGET
      case 'p':
        put(memo_index(line()));
        return;  // PUT
      case 'q':
        put(uint_le(1));
        return;  // BINPUT
      case 'r':
        put(uint_le(4));
        return;  // LONG_BINPUT
      case 0x94:
        put(memo_.size());
        return;  // MEMOIZE

      case 0x82:
      case 0x83:
      case 0x84:  // EXT1, EXT2, EXT4
        throw fail("copyreg extension codes (EXT1/2/4) are not allowed; nothing was executed");
      case 0x97:
      case 0x98:  // NEXT_BUFFER, READONLY_BUFFER
        throw fail("out-of-band buffers are not supported");
      default: {
        static const char* digits = "0123456789abcdef";
        throw fail(std::string("unknown opcode 0x") + digits[op >> 4] + digits[op & 15]);
      }
    }
  }

  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0, op_pos_ = 0;
  const std::string& label_;
  Limits limits_;
  Pickle out_;
  std::vector<Id> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Id> memo_;
  uint64_t items_ = 0;
};

Pickle parse(const uint8_t* data, uint64_t size, const std::string& label, const Limits& limits) {
  return Reader(data, size, label, limits).run();
}

}  // namespace sdgen::pickle
