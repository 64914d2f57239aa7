#include <cstring>
#include <fstream>

#include "sdgen/error.h"
#include "sdgen/safetensors.h"
#include "sdgen/weights.h"
#include "test_util.h"

namespace sdgen {
namespace {

std::string header_file(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string expect_error(const std::string& bytes) {
  try {
    SafeTensorsFile::from_bytes(bytes, "bad.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for malformed file";
  return "";
}

TEST(SafeTensors, RoundTripEveryDType) {
  const std::string dir = test::temp_dir("st");
  const std::string path = dir + "/t.safetensors";
  torch::manual_seed(0);
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"f32", torch::randn({3, 4})},
      {"f16", torch::randn({2, 5}).to(torch::kFloat16)},
      {"bf16", torch::randn({7}).to(torch::kBFloat16)},
      {"f64", torch::randn({2, 2, 2}, torch::kFloat64)},
      {"i64", torch::arange(10, torch::kInt64).view({2, 5})},
      {"i32", torch::arange(-3, 3, torch::kInt32)},
      {"u8", torch::arange(0, 255, torch::kInt32).to(torch::kUInt8)},
      {"scalar", torch::scalar_tensor(3.5f)},
      {"empty", torch::empty({0, 4})},
      {"strided", torch::randn({4, 6}).t()},
  };
  write_safetensors(path, tensors, {{"format", "pt"}});
  SafeTensorsFile f(path);
  ASSERT_EQ(f.names().size(), tensors.size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  for (const auto& [name, t] : tensors) {
    auto got = f.tensor(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), t.sizes()) << name;
    EXPECT_TRUE(torch::equal(got, t.contiguous())) << name;
  }
  EXPECT_EQ(f.info("f16").dtype, DType::F16);
  EXPECT_THROW(f.info("nope"), Error);
}

TEST(SafeTensors, ZeroCopyViewOutlivesFile) {
  const std::string path = test::temp_dir("st") + "/v.safetensors";
  write_safetensors(path, {{"w", torch::arange(16, torch::kFloat32)}});
  torch::Tensor view;
  {
    SafeTensorsFile f(path);
    view = f.tensor("w");
  }
  EXPECT_FLOAT_EQ(view[15].item<float>(), 15.f);
}

TEST(SafeTensors, RejectsMalformedFiles) {
  EXPECT_NE(expect_error("").find("shorter than the 8-byte"), std::string::npos);
  EXPECT_NE(expect_error("abc").find("shorter"), std::string::npos);
  {  // header length beyond the file
    std::string b = header_file("{}");
    b[0] = 100;
    EXPECT_NE(expect_error(b).find("larger than the file"), std::string::npos);
  }
  {  // absurd header length
    std::string b(16, '\0');
    b[6] = 1;
    EXPECT_NE(expect_error(b).find("limit"), std::string::npos);
  }
  EXPECT_NE(expect_error(header_file("not json")).find("not valid JSON"), std::string::npos);
  EXPECT_NE(expect_error(header_file("[1,2]")).find("not a JSON object"), std::string::npos);
  EXPECT_NE(expect_error(header_file(R"({"a":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}})",
                                     std::string(1, '\0')))
                .find("unsupported dtype 'Q8'"),
            std::string::npos);
  EXPECT_NE(expect_error(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                     std::string(4, '\0')))
                .find("outside the data section"),
            std::string::npos);
  EXPECT_NE(expect_error(header_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                                     std::string(8, '\0')))
                .find("need 12"),
            std::string::npos);
  EXPECT_NE(expect_error(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                     std::string(12, '\0')))
                .find("overlap"),
            std::string::npos);
  EXPECT_NE(expect_error(header_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})"))
                .find("non-negative"),
            std::string::npos);
  EXPECT_NE(expect_error(header_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})",
                                     std::string(8, '\0')))
                .find("begin > end"),
            std::string::npos);
  EXPECT_NE(expect_error(header_file(R"({"a":{"dtype":"F32","shape":[1]}})")).find("data_offsets"),
            std::string::npos);
}

TEST(SafeTensors, TruncatedFileOnDisk) {
  const std::string dir = test::temp_dir("st");
  const std::string path = dir + "/t.safetensors";
  write_safetensors(path, {{"w", torch::randn({64})}});
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string cut = dir + "/cut.safetensors";
  std::ofstream(cut, std::ios::binary).write(bytes.data(), bytes.size() - 10);
  try {
    SafeTensorsFile f(cut);
    FAIL() << "truncated file accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(cut), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  EXPECT_THROW(SafeTensorsFile(dir + "/missing.safetensors"), Error);
}

TEST(Weights, StrictLoadingNamesEveryProblem) {
  torch::nn::Sequential model(torch::nn::Linear(3, 2), torch::nn::Linear(2, 1));
  TensorMap good = {{"0.weight", torch::ones({2, 3})},
                    {"0.bias", torch::zeros({2})},
                    {"1.weight", torch::ones({1, 2}).to(torch::kFloat16)},
                    {"1.bias", torch::zeros({1})}};
  load_weights(*model, good, "toy");
  EXPECT_FLOAT_EQ(model->parameters()[0].sum().item<float>(), 6.f);

  TensorMap bad = good;
  bad["0.weight"] = torch::ones({3, 3});
  bad.erase("1.bias");
  bad["extra.weight"] = torch::ones({1});
  try {
    load_weights(*model, bad, "toy");
    FAIL() << "mismatch accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("0.weight (expected [2, 3], found [3, 3])"), std::string::npos) << m;
    EXPECT_NE(m.find("missing (1.bias)"), std::string::npos) << m;
    EXPECT_NE(m.find("unexpected (extra.weight)"), std::string::npos) << m;
  }
}

TEST(Weights, LoadsIntoTargetDtypeAndReleasesFilePages) {
  const std::string path = test::temp_dir("st") + "/w.safetensors";
  const auto w = torch::randn({256, 1024});  // 1 MiB: spans whole pages
  const auto b = torch::randn({256});
  write_safetensors(path, {{"weight", w.to(torch::kFloat16)}, {"bias", b}});
  torch::nn::Linear layer(1024, 256);
  {
    SafeTensorsFile file(path);
    auto weights = tensors_with_prefix(file, "");
    load_weights(*layer, weights, "toy", {torch::Device(torch::kCPU), torch::kBFloat16});
    // The file's pages were released; the mapping still reads back correctly.
    EXPECT_TRUE(torch::equal(weights["weight"], w.to(torch::kFloat16)));
  }
  EXPECT_EQ(layer->weight.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(layer->weight, w.to(torch::kFloat16).to(torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(layer->bias, b.to(torch::kBFloat16)));
  // Not inside a mapping: left alone.
  auto heap = torch::ones({1 << 20});
  release_mapped_pages(heap);
  EXPECT_EQ(heap.sum().item<double>(), double(1 << 20));
}

TEST(SafeTensors, ReadsGoldenFile) {
  SDGEN_REQUIRE_SHARED();
  const auto& f = test::golden_file();
  EXPECT_EQ(f.info("tokens.0").dtype, DType::I64);
  EXPECT_EQ(f.tensor("unet.in.x").sizes(), (std::vector<int64_t>{2, 4, 8, 8}));
  EXPECT_FALSE(test::golden_meta().empty());
}

}  // namespace
}  // namespace sdgen
