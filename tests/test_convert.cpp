// `sdgen convert` (issue 30): PyTorch checkpoints to safetensors without
// running their code. The tiny SD1 checkpoint of ../shared converts to the
// same tensors as its safetensors twin and generates the same image; views,
// dtypes, nested dicts, every pickle protocol, and hostile inputs (refused
// globals, truncation, deep nesting, huge memo indices) are checked on files
// the tests write themselves (tests/pickle_writer.h).

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "pickle_writer.h"
#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/pickle.h"
#include "sdgen/png_reader.h"
#include "sdgen/safetensors.h"
#include "sdgen/torch_checkpoint.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

std::string q(const std::string& s) { return "'" + s + "'"; }

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string bytes_of(const torch::Tensor& t) {
  const auto c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

template <typename T>
std::string raw(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

// The error message of converting `bytes` (written to dir/name), or "" when it converts.
std::string convert_error(const std::string& dir, const std::string& name,
                          const std::string& bytes) {
  write_file(dir + "/" + name, bytes);
  try {
    convert_torch_checkpoint(dir + "/" + name, dir + "/" + name + ".safetensors");
  } catch (const Error& e) {
    EXPECT_FALSE(fs::exists(dir + "/" + name + ".safetensors")) << "output left behind";
    return e.what();
  }
  return "";
}

std::string sdgen_bin() { return test::binary_dir() + "/sdgen"; }

TEST(Convert, TinyCheckpointMatchesSafetensors) {
  SDGEN_REQUIRE_SHARED();
  const std::string ckpt = test::shared_dir() + "/models/sd1-tiny.ckpt";
  if (!fs::exists(ckpt)) GTEST_SKIP() << ckpt << " not found; skipping";
  const auto dir = test::temp_dir("convert");
  const std::string out = dir + "/sd1-tiny.safetensors";
  const ConvertReport report = convert_torch_checkpoint(ckpt, out);
  EXPECT_TRUE(report.dropped.empty());
  const SafeTensorsFile converted(out), reference(test::tiny_model_file());
  ASSERT_EQ(converted.names(), reference.names());
  for (const auto& name : reference.names()) {
    const auto& a = converted.info(name);
    const auto& b = reference.info(name);
    EXPECT_EQ(a.dtype, b.dtype) << name;
    EXPECT_EQ(a.shape, b.shape) << name;
    EXPECT_TRUE(bytes_of(converted.tensor(name)) == bytes_of(reference.tensor(name))) << name;
  }
  EXPECT_EQ(converted.metadata(), (std::map<std::string, std::string>{{"global_step", "470000"}}));
}

// The converted file generates the reference's image: the binary converts,
// then generates from both files (the PNGs differ only in "Model hash").
TEST(Convert, TinyCheckpointGeneratesSameImage) {
  SDGEN_REQUIRE_SHARED();
  const std::string ckpt = test::shared_dir() + "/models/sd1-tiny.ckpt";
  if (!fs::exists(ckpt)) GTEST_SKIP() << ckpt << " not found; skipping";
  const auto dir = test::temp_dir("convert-cli");
  fs::create_directories(dir + "/converted");
  const std::string out = dir + "/converted/sd1-tiny.safetensors";
  std::string log;
  ASSERT_EQ(test::run(sdgen_bin() + " convert " + q(ckpt) + " -o " + q(out), &log), 0) << log;
  EXPECT_NE(log.find("536 tensors (F32), 1 metadata entry (global_step), 0 other entries dropped"),
            std::string::npos)
      << log;
  // Converting again refuses to replace the file, unless --force.
  EXPECT_EQ(test::run(sdgen_bin() + " convert " + q(ckpt) + " -o " + q(out), &log), 2) << log;
  EXPECT_NE(log.find("already exists"), std::string::npos) << log;
  ASSERT_EQ(test::run(sdgen_bin() + " convert -q --force " + q(ckpt) + " -o " + q(out), &log), 0)
      << log;
  EXPECT_EQ(log, "");

  std::map<std::string, std::string> texts;
  std::map<std::string, std::string> pixels;
  for (const auto& [tag, model] :
       {std::pair<std::string, std::string>{"reference", test::tiny_model_file()},
        {"converted", out}}) {
    const std::string png = dir + "/" + tag + ".png";
    ASSERT_EQ(test::run(sdgen_bin() + " -q --threads 1 --model " + q(model) + " --config " +
                            q(test::tiny_model_dir()) +
                            " -p 'a red fox' --steps 3 --seed 5 -W 64 -H 64 -o " + q(png),
                        &log),
              0)
        << log;
    const PngImage image = read_png(png);
    pixels[tag] = bytes_of(image.pixels);
    for (const auto& [key, value] : image.text)
      if (key == "parameters") texts[tag] = value;
  }
  EXPECT_TRUE(pixels["converted"] == pixels["reference"]) << "the images differ";
  // "parameters" agree but for the model hash (of a different file).
  auto without_hash = [](std::string s) {
    const auto at = s.find("Model hash: ");
    if (at != std::string::npos) s.erase(at, s.find(',', at) - at);
    return s;
  };
  ASSERT_NE(texts["reference"], "");
  EXPECT_NE(texts["converted"], texts["reference"]);  // the hash
  EXPECT_EQ(without_hash(texts["converted"]), without_hash(texts["reference"]));
}

// A storage of 24 floats 0..23 shared by views of every kind.
TEST(Convert, ViewsOfASharedStorage) {
  const auto dir = test::temp_dir("convert-views");
  std::vector<float> values(24);
  for (int i = 0; i < 24; ++i) values[i] = static_cast<float>(i);
  struct View {
    std::string name;
    int64_t offset;
    std::vector<int64_t> size, stride;
  };
  const std::vector<View> views = {
      {"contiguous", 0, {2, 3}, {3, 1}},   {"offset", 5, {3, 2}, {2, 1}},
      {"transposed", 2, {4, 3}, {1, 4}},   {"strided", 1, {3}, {5}},
      {"broadcast", 4, {2, 3}, {0, 1}},    {"scalar", 7, {}, {}},
      {"empty", 24, {0, 3}, {3, 1}},       {"permuted3d", 0, {2, 3, 4}, {1, 8, 2}},
      {"last_element", 23, {1, 1}, {1, 1}}};
  test::PickleWriter w;
  w.op('}').mark();
  for (const auto& v : views)
    w.str(v.name).tensor("FloatStorage", "0", 24, v.offset, v.size, v.stride);
  w.op('u');
  const std::string path = dir + "/views.pt";
  write_file(path, test::torch_checkpoint(w.bytes(), {{"0", raw(values)}}));
  const ConvertReport report = convert_torch_checkpoint(path, dir + "/views.safetensors");
  EXPECT_EQ(report.tensors.size(), views.size());
  const SafeTensorsFile out(dir + "/views.safetensors");
  const auto storage = torch::tensor(values);
  for (const auto& v : views) {
    const auto expected = storage.as_strided(v.size, v.stride, v.offset).contiguous();
    ASSERT_TRUE(out.contains(v.name)) << v.name;
    EXPECT_EQ(out.info(v.name).shape, v.size) << v.name;
    EXPECT_TRUE(torch::equal(out.tensor(v.name), expected)) << v.name;
  }
}

// A1111 embeddings, training checkpoints and state dicts of nested modules.
TEST(Convert, NestedDictsAndMetadata) {
  const auto dir = test::temp_dir("convert-nested");
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  // {"string_to_token": {"*": 265}, "string_to_param": {"*": tensor}, "name": "cat",
  //  "step": 100, "lr": 0.005, "flag": True, "none": None, "layers": [1, 2]}
  test::PickleWriter emb;
  emb.op('}').mark();
  emb.str("string_to_token").op('}').str("*").integer(265).op('s');
  emb.str("string_to_param")
      .op('}')
      .str("*")
      .tensor("FloatStorage", "0", 6, 0, {2, 3}, {3, 1})
      .op('s');
  emb.str("name").str("cat").str("step").integer(100).str("lr").floating(0.005);
  emb.str("flag").boolean(true).str("none").none().str("layers").tuple_of({1, 2});
  emb.op('u');
  write_file(dir + "/cat.pt", test::torch_checkpoint(emb.bytes(), {{"0", raw(values)}}));
  const ConvertReport a = convert_torch_checkpoint(dir + "/cat.pt", dir + "/cat.safetensors");
  ASSERT_EQ(a.tensors.size(), 1u);
  EXPECT_EQ(a.tensors[0].first, "string_to_param.*");
  EXPECT_EQ(a.metadata, (std::map<std::string, std::string>{{"flag", "True"},
                                                            {"lr", "0.005"},
                                                            {"name", "cat"},
                                                            {"step", "100"},
                                                            {"string_to_token.*", "265"}}));
  EXPECT_EQ(a.dropped, (std::vector<std::string>{"none", "layers"}));

  // {"state_dict": {"model": {"w": t}, "b": t2}, "global_step": 7, "epoch": 1,
  //  "optimizer_states": [{"m": t}]}: the state dict is the top level, the
  // other entries only give metadata.
  test::PickleWriter ckpt;
  ckpt.op('}').mark().str("state_dict").op('}').mark();
  ckpt.str("model").op('}').str("w").tensor("FloatStorage", "0", 6, 0, {6}, {1}).op('s');
  ckpt.str("b").tensor("FloatStorage", "0", 6, 2, {2}, {1}).op('u');
  ckpt.str("global_step").integer(7).str("epoch").integer(1);
  ckpt.str("optimizer_states").op(']').op('}').str("m");
  ckpt.tensor("FloatStorage", "0", 6, 0, {6}, {1}).op('s').op('a').op('u');
  write_file(dir + "/train.ckpt", test::torch_checkpoint(ckpt.bytes(), {{"0", raw(values)}}));
  const ConvertReport b = convert_torch_checkpoint(dir + "/train.ckpt", dir + "/train.safetensors");
  ASSERT_EQ(b.tensors.size(), 2u);
  EXPECT_EQ(b.tensors[0].first, "b");
  EXPECT_EQ(b.tensors[1].first, "model.w");
  EXPECT_EQ(b.metadata, (std::map<std::string, std::string>{{"epoch", "1"}, {"global_step", "7"}}));
  EXPECT_EQ(b.dropped, (std::vector<std::string>{"optimizer_states"}));
  const SafeTensorsFile out(dir + "/train.safetensors");
  EXPECT_TRUE(torch::equal(out.tensor("b"), torch::tensor({3.f, 4.f})));
}

// --dtype rounds as torch's .to() does; integer tensors keep their type;
// every storage type of the allow-list converts.
TEST(Convert, DTypesAsTorchConvertsThem) {
  const auto dir = test::temp_dir("convert-dtypes");
  auto f32 = torch::cat(
      {torch::randn({4000}, torch::Generator()),
       torch::tensor({0.f, -0.f, 65504.f, 65519.f, 65520.f, 1e-8f, 6e-8f, 3e-8f, 2.98e-8f, 1e-40f,
                      1.00048828125f, 1.000732421875f, std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity(),
                      std::numeric_limits<float>::quiet_NaN(), 3.4e38f})});
  f32 = torch::cat({f32, f32 * 1e-5, f32 * 1e4});
  const auto f64 = f32.to(torch::kFloat64) * (1 + 1e-9);
  const auto f16 = f32.to(torch::kFloat16);
  const auto bf16 = f32.to(torch::kBFloat16);
  const auto i64 = torch::arange(-5, 5, torch::kInt64);
  const auto i8 = torch::arange(-5, 5, torch::kInt8);
  const auto b = torch::arange(0, 4).remainder(2).to(torch::kBool);
  const std::vector<std::tuple<std::string, std::string, torch::Tensor>> tensors = {
      {"f32", "FloatStorage", f32},
      {"f64", "DoubleStorage", f64},
      {"f16", "HalfStorage", f16},
      {"bf16", "BFloat16Storage", bf16},
      {"i64", "LongStorage", i64},
      {"i32", "IntStorage", i64.to(torch::kInt32)},
      {"i16", "ShortStorage", i64.to(torch::kInt16)},
      {"i8", "CharStorage", i8},
      {"u8", "ByteStorage", i8.to(torch::kUInt8)},
      {"b", "BoolStorage", b}};
  test::PickleWriter w;
  w.op('}').mark();
  std::vector<std::pair<std::string, std::string>> storages;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, type, t] = tensors[i];
    w.str(name).tensor(type, std::to_string(i), t.numel(), 0, {t.numel()}, {1});
    storages.emplace_back(std::to_string(i), bytes_of(t));
  }
  w.op('u');
  write_file(dir + "/all.pt", test::torch_checkpoint(w.bytes(), storages));
  convert_torch_checkpoint(dir + "/all.pt", dir + "/same.safetensors");
  const SafeTensorsFile same(dir + "/same.safetensors");
  for (const auto& [name, type, t] : tensors) {
    EXPECT_EQ(same.tensor(name).scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(bytes_of(same.tensor(name)) == bytes_of(t)) << name;
  }
  for (const auto& [flag, dtype] :
       {std::pair{DType::F16, torch::kFloat16}, std::pair{DType::BF16, torch::kBFloat16},
        std::pair{DType::F32, torch::kFloat32}}) {
    ConvertOptions options;
    options.dtype = flag;
    const std::string path = dir + "/" + dtype_name(flag) + ".safetensors";
    convert_torch_checkpoint(dir + "/all.pt", path, options);
    const SafeTensorsFile out(path);
    for (const auto& [name, type, t] : tensors) {
      const bool is_float = t.is_floating_point();
      const auto expected = is_float ? t.to(dtype) : t;
      const auto got = out.tensor(name);
      EXPECT_EQ(got.scalar_type(), expected.scalar_type()) << name;
      if (!is_float) {
        EXPECT_TRUE(bytes_of(got) == bytes_of(expected)) << name << " as " << dtype_name(flag);
        continue;
      }
      // NaN's bits differ within torch itself (its vectorised bf16 path
      // writes 0xffff, the scalar one 0x7fc0): NaN only has to stay NaN.
      const auto nan = torch::isnan(expected);
      EXPECT_TRUE(torch::equal(torch::isnan(got), nan)) << name << " as " << dtype_name(flag);
      EXPECT_TRUE(bytes_of(got.masked_fill(nan, 0)) == bytes_of(expected.masked_fill(nan, 0)))
          << name << " as " << dtype_name(flag);
    }
  }
}

// The less common ways torch writes a tensor: parameters, _rebuild_tensor_v3
// with an untyped storage, _rebuild_from_type_v2; and a ZIP64 archive under
// another prefix.
TEST(Convert, ParametersV3AndZip64) {
  const auto dir = test::temp_dir("convert-forms");
  const std::vector<float> values = {1, 2, 3, 4};
  test::PickleWriter w(4);
  w.op('}').mark();
  w.str("param").global("torch._utils", "_rebuild_parameter").mark();
  w.tensor("FloatStorage", "0", 4, 0, {4}, {1}).boolean(true);
  w.global("collections", "OrderedDict").op(')').op('R').op('t').op('R');
  w.str("v3").global("torch._utils", "_rebuild_tensor_v3").mark();
  w.mark().str("storage").global("torch.storage", "UntypedStorage").str("0").str("cpu").integer(16);
  w.op('t').op('Q').integer(1).tuple_of({2}).tuple_of({1}).boolean(false);
  w.global("collections", "OrderedDict").op(')').op('R').global("torch", "float32").op('t').op('R');
  w.str("typed").global("torch._tensor", "_rebuild_from_type_v2").mark();
  w.global("torch._utils", "_rebuild_tensor_v2").global("torch", "Tensor").mark();
  w.mark().str("storage").global("torch", "FloatStorage").str("0").str("cpu").integer(4);
  w.op('t').op('Q').integer(3).tuple_of({1}).tuple_of({1}).boolean(false);
  w.global("collections", "OrderedDict").op(')').op('R').op('t').op('}').op('t').op('R');
  w.op('u');
  test::ZipOptions zip64;
  zip64.zip64 = true;
  write_file(dir + "/forms.pth",
             test::torch_checkpoint(w.bytes(), {{"0", raw(values)}}, zip64, "some_name"));
  convert_torch_checkpoint(dir + "/forms.pth", dir + "/forms.safetensors");
  const SafeTensorsFile out(dir + "/forms.safetensors");
  EXPECT_TRUE(torch::equal(out.tensor("param"), torch::tensor(values)));
  EXPECT_TRUE(torch::equal(out.tensor("v3"), torch::tensor({2.f, 3.f})));
  EXPECT_TRUE(torch::equal(out.tensor("typed"), torch::tensor({4.f})));
}

// Python's own pickles of plain data, protocols 0 to 5 (as fuzz/make_corpus.py
// writes them with pickle.dumps): {"a": 1, "b": [1.5, "x", b"y", None, True],
// "c": (1, 2, 3), "d": {1, 2}, "e": 2**70, "f": -5, "g": "é中"}.
TEST(Convert, EveryPickleProtocol) {
  for (int proto = 0; proto <= 5; ++proto) {
    const std::string path =
        test::source_dir() + "/fuzz/corpus/pickle/plain_proto" + std::to_string(proto);
    std::ifstream in(path, std::ios::binary);
    ASSERT_TRUE(in) << path;
    const std::string bytes((std::istreambuf_iterator<char>(in)), {});
    const auto p =
        pickle::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path);
    const auto& root = p.at(p.root());
    ASSERT_EQ(root.kind, pickle::Kind::dict) << proto;
    std::map<std::string, const pickle::Value*> items;
    for (size_t i = 0; i + 1 < root.items.size(); i += 2)
      items[p.at(root.items[i]).text] = &p.at(root.items[i + 1]);
    ASSERT_EQ(items.size(), 7u) << proto;
    EXPECT_EQ(items["a"]->integer, 1);
    const auto& b = *items["b"];
    ASSERT_EQ(b.items.size(), 5u);
    EXPECT_EQ(p.at(b.items[0]).floating, 1.5);
    EXPECT_EQ(p.at(b.items[1]).text, "x");
    EXPECT_EQ(p.at(b.items[2]).kind, pickle::Kind::bytes) << proto;
    EXPECT_EQ(p.at(b.items[2]).text, "y");
    EXPECT_EQ(p.at(b.items[3]).kind, pickle::Kind::none);
    EXPECT_TRUE(p.at(b.items[4]).boolean);
    EXPECT_EQ(items["c"]->kind, pickle::Kind::tuple);
    EXPECT_EQ(items["c"]->items.size(), 3u);
    EXPECT_EQ(items["d"]->kind, pickle::Kind::set) << proto;
    EXPECT_EQ(items["d"]->items.size(), 2u) << proto;
    EXPECT_EQ(items["e"]->kind, pickle::Kind::big_integer) << proto;
    EXPECT_EQ(items["f"]->integer, -5) << proto;
    EXPECT_EQ(items["g"]->text, "\u00e9\u4e2d") << proto;
  }
}

// Refused globals: the message names the global, and nothing ran (the
// payload would have created the file).
TEST(Convert, RefusesGlobalsWithoutRunningThem) {
  const auto dir = test::temp_dir("convert-evil");
  const std::string marker = dir + "/pwned";
  for (const auto& [module, name] :
       std::vector<std::pair<std::string, std::string>>{{"posix", "system"},
                                                        {"os", "system"},
                                                        {"builtins", "eval"},
                                                        {"builtins", "exec"},
                                                        {"__builtin__", "eval"},
                                                        {"subprocess", "Popen"},
                                                        {"builtins", "getattr"},
                                                        {"torch", "load"},
                                                        {"torch.serialization", "load"},
                                                        {"collections", "defaultdict"}}) {
    const std::string full = (module == "__builtin__" ? "builtins" : module) + "." + name;
    const std::string error = convert_error(
        dir, "evil.ckpt",
        test::torch_checkpoint(test::malicious_pickle(module, name, "touch " + marker), {}));
    EXPECT_NE(error.find("refused pickle global '" + full + "'"), std::string::npos) << error;
    EXPECT_NE(error.find("nothing was executed"), std::string::npos) << error;
    EXPECT_FALSE(fs::exists(marker));
  }
  // STACK_GLOBAL (protocol 4) and INST (protocol 0) name globals too.
  test::PickleWriter stack(4);
  stack.op('}').str("x").raw("\x8c\x05posix\x8c\x06system\x93").op('s');
  EXPECT_NE(convert_error(dir, "stack.ckpt", test::torch_checkpoint(stack.bytes(), {}))
                .find("refused pickle global 'posix.system'"),
            std::string::npos);
  test::PickleWriter inst(0);
  inst.op('}').str("x").mark().str("touch " + marker).raw("ios\nsystem\n").op('s');
  EXPECT_NE(convert_error(dir, "inst.ckpt", test::torch_checkpoint(inst.bytes(), {}))
                .find("refused pickle global 'os.system'"),
            std::string::npos);
  // An allowed global used as something it is not.
  test::PickleWriter call_string;
  call_string.op('}').str("x").str("os.system").mark().str("x").op('t').op('R').op('s');
  EXPECT_NE(convert_error(dir, "call.ckpt", test::torch_checkpoint(call_string.bytes(), {}))
                .find("not an allowed global"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(marker));
}

// Broken and hostile containers and pickles: one clear error each.
TEST(Convert, RobustAgainstBrokenInputs) {
  const auto dir = test::temp_dir("convert-broken");
  const std::vector<float> values(12, 1.f);
  auto one_tensor = [](int64_t numel, int64_t offset, std::vector<int64_t> size,
                       std::vector<int64_t> stride) {
    test::PickleWriter w;
    w.op('}').str("w").tensor("FloatStorage", "0", numel, offset, size, stride).op('s');
    return w.bytes();
  };
  const std::string good =
      test::torch_checkpoint(one_tensor(12, 0, {3, 4}, {4, 1}), {{"0", raw(values)}});
  ASSERT_EQ(convert_error(dir, "good.ckpt", good), "");
  auto expect = [&](const std::string& name, const std::string& bytes,
                    const std::vector<std::string>& words) {
    const std::string error = convert_error(dir, name, bytes);
    ASSERT_NE(error, "") << name << " converted";
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
    for (const auto& w : words)
      EXPECT_NE(error.find(w), std::string::npos) << name << ": " << error;
  };
  expect("truncated.ckpt", good.substr(0, good.size() / 2), {"truncated.ckpt", "ZIP"});
  expect("cut_tail.ckpt", good.substr(0, good.size() - 10), {"cut_tail.ckpt"});
  expect("not_zip.ckpt", "this is not a checkpoint at all, just some text", {"not a ZIP archive"});
  expect("empty.ckpt", "", {"too short"});
  expect("legacy.ckpt",
         std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15),
         {"legacy format (before torch 1.6)"});
  test::ZipOptions deflated;
  deflated.compressed = "archive/data.pkl";
  expect("compressed.ckpt", test::torch_checkpoint(one_tensor(12, 0, {3, 4}, {4, 1}), {}, deflated),
         {"'archive/data.pkl' is compressed"});
  expect(
      "short_storage.ckpt",
      test::torch_checkpoint(one_tensor(12, 0, {3, 4}, {4, 1}), {{"0", raw(values).substr(0, 40)}}),
      {"'archive/data/0' holds 40 bytes", "12 elements"});
  expect("view_too_big.ckpt",
         test::torch_checkpoint(one_tensor(12, 0, {4, 4}, {4, 1}), {{"0", raw(values)}}),
         {"tensor 'w'", "needs element 15", "holds 12 elements"});
  expect("offset_past_end.ckpt",
         test::torch_checkpoint(one_tensor(12, 13, {1}, {1}), {{"0", raw(values)}}),
         {"storage offset 13 is past the end"});
  expect("missing_storage.ckpt", test::torch_checkpoint(one_tensor(12, 0, {3, 4}, {4, 1}), {}),
         {"'archive/data/0' is not in the archive"});
  expect("huge_shape.ckpt",
         test::torch_checkpoint(one_tensor(12, 0, {1ll << 40, 1ll << 40}, {0, 0}),
                                {{"0", raw(values)}}),
         {"too large"});
  expect("broadcast_bomb.ckpt",
         test::torch_checkpoint(one_tensor(12, 0, {1ll << 20, 1ll << 20}, {0, 0}),
                                {{"0", raw(values)}}),
         {"larger than 16 times"});
  // 100,000 nested lists: [[[...]]] (EMPTY_LIST x N, APPEND x N-1).
  const int n = 100000;
  test::PickleWriter deep;
  deep.op('}').str("deep");
  deep.raw(std::string(n, ']')).raw(std::string(n - 1, 'a')).op('s');
  expect("deep_lists.ckpt", test::torch_checkpoint(deep.bytes(), {}), {"nested deeper than"});
  // 100,000 dicts, each the value of the one before: {"a": {"a": ...}}.
  test::PickleWriter deep_dicts;
  for (int i = 0; i < n; ++i) deep_dicts.op('}').str("a");
  deep_dicts.integer(1);
  deep_dicts.raw(std::string(n, 's'));
  expect("deep_dicts.ckpt", test::torch_checkpoint(deep_dicts.bytes(), {}), {"nested deeper than"});
  // 100,000 MARKs.
  test::PickleWriter marks;
  marks.raw(std::string(n, '('));
  expect("deep_marks.ckpt", test::torch_checkpoint(marks.bytes(), {}), {"nested deeper than 1000"});
  // A dict that contains itself.
  test::PickleWriter cycle;
  cycle.op('}').put(0).str("self").get(0).op('s');
  expect("cycle.ckpt", test::torch_checkpoint(cycle.bytes(), {}), {"nested deeper than"});
  // Memo indices: the largest one is stored without allocating for it; an
  // index never stored is an error.
  test::PickleWriter memo;
  memo.op('}').put(0xffffffffu).str("x").integer(1).op('s');
  ASSERT_EQ(convert_error(dir, "memo_ok.ckpt", test::torch_checkpoint(memo.bytes(), {})), "");
  test::PickleWriter bad_memo;
  bad_memo.get(0xffffffffu);
  expect("memo.ckpt", test::torch_checkpoint(bad_memo.bytes(), {}),
         {"memo index 4294967295 was never stored"});
  // Lengths past the end of the data.
  test::PickleWriter long_string;
  long_string.op('X').le(0xfffffff0u, 4).raw("abc");
  expect("long_string.ckpt", test::torch_checkpoint(long_string.bytes(), {}),
         {"runs past the end"});
  test::PickleWriter long_bytes;
  long_bytes.op('\x8e').le(~uint64_t{0}, 8);
  expect("long_bytes.ckpt", test::torch_checkpoint(long_bytes.bytes(), {}), {"runs past the end"});
  expect("no_stop.ckpt", test::torch_checkpoint("\x80\x02}", {}), {"before the STOP"});
  expect("underflow.ckpt", test::torch_checkpoint("\x80\x02s.", {}), {"stack underflow"});
  expect("bad_opcode.ckpt", test::torch_checkpoint("\x80\x02\xff.", {}), {"unknown opcode 0xff"});
  expect("not_a_dict.ckpt", test::torch_checkpoint("\x80\x02K\x01.", {}), {"not a dict"});
  std::vector<std::pair<std::string, std::string>> no_pickle = {{"archive/version", "3\n"}};
  expect("no_data_pkl.ckpt", test::zip_archive(no_pickle), {"without <prefix>/data.pkl"});
  // Nothing was left in the folder but the inputs and good.ckpt's output.
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    EXPECT_TRUE(name.find(".safetensors") == std::string::npos || name == "good.ckpt.safetensors" ||
                name == "memo_ok.ckpt.safetensors")
        << name;
    EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
  }
}

// Converting streams: resident memory does not grow with the model. A
// checkpoint with a 96 MB tensor converts within 48 MB of what the binary
// needs to start at all (libtorch's libraries and allocator).
TEST(Convert, StreamsWithoutHoldingTheModel) {
  const auto dir = test::temp_dir("convert-memory");
  const int64_t numel = 24 << 20;  // 96 MB of fp32
  {
    test::PickleWriter w;
    w.op('}').str("big").tensor("FloatStorage", "0", numel, 0, {numel}, {1}).op('s');
    const std::string pkl = w.bytes();
    std::string storage(static_cast<size_t>(numel) * 4, '\0');
    for (size_t i = 0; i < storage.size(); i += 4096) storage[i] = static_cast<char>(i / 4096);
    write_file(dir + "/big.ckpt", test::torch_checkpoint(pkl, {{"0", storage}}));
  }
  auto max_rss_kb = [](const std::string& command) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    int status = 0;
    struct rusage usage {};
    ::wait4(pid, &status, 0, &usage);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << command;
    return static_cast<long>(usage.ru_maxrss);
  };
  const long baseline = max_rss_kb("exec " + sdgen_bin() + " convert --help >/dev/null");
  const long converting = max_rss_kb("exec " + sdgen_bin() + " convert -q " + q(dir + "/big.ckpt") +
                                     " -o " + q(dir + "/big.safetensors"));
  std::cout << "[convert] max RSS: " << baseline / 1024 << " MB to start, " << converting / 1024
            << " MB converting a 96 MB checkpoint" << std::endl;
  EXPECT_LT(converting - baseline, 48 * 1024);
  const SafeTensorsFile out(dir + "/big.safetensors");
  EXPECT_EQ(out.info("big").end - out.info("big").begin, static_cast<uint64_t>(numel) * 4);
}

TEST(Convert, LoadersNameTheCommand) {
  EXPECT_EQ(convert_command_hint("/m/old.ckpt"),
            "convert it once with: sdgen convert '/m/old.ckpt' -o '/m/old.safetensors'");
  EXPECT_EQ(convert_command_hint("te/pytorch_model.bin"),
            "convert it once with: sdgen convert 'te/pytorch_model.bin' -o 'te/model.safetensors'");
  EXPECT_TRUE(is_pickle_file_name("a/B.PT"));
  EXPECT_FALSE(is_pickle_file_name("a/b.safetensors"));
}

}  // namespace
}  // namespace sdgen
