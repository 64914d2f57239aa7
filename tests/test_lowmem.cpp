// --dtype fp32-lowmem (LoadOptions::weights_as_stored): the checkpoint's
// weights stay as stored (fp16/bf16/fp32 views of the mapped file) and every
// layer converts its weights to fp32 on use. fp16/bf16 -> fp32 is exact, so
// images must be bit-identical to the fp32 path (weights converted at load);
// a merged LoRA is rounded once to the stored dtype; un-merging gives the
// mapped file tensors back. The memory estimate counts the stored bytes.

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/lora.h"
#include "sdgen/memory_estimate.h"
#include "sdgen/pipeline.h"
#include "sdgen/runtime.h"
#include "sdgen/safetensors.h"
#include "sdgen/settings.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

// The tiny model as a diffusers folder whose weights files store `dtype`
// (rounded copies of its float32 weights).
std::string tiny_copy(torch::ScalarType dtype) {
  const std::string dir = test::temp_dir(std::string("lowmem-") + dtype_name(dtype));
  fs::copy(test::tiny_model_dir(), dir,
           fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    {
      const SafeTensorsFile f(entry.path().string());
      for (const auto& name : f.names()) {
        const torch::Tensor t = f.tensor(name);
        tensors.emplace_back(name, t.is_floating_point() ? t.to(dtype) : t.clone());
      }
    }
    write_safetensors(entry.path().string(), tensors);
  }
  return dir;
}

StableDiffusionModel load(const std::string& path, bool as_stored) {
  LoadOptions o;
  o.model_path = path;
  o.dtype = torch::kFloat32;
  o.weights_as_stored = as_stored;
  return load_model(o);
}

GenerationResult generate(StableDiffusionModel& model, const GenerationRequest& request) {
  Pipeline pipeline(model);
  return pipeline.generate(request);
}

// Parameters of all three parts in `dtype`, and how many are file views.
int64_t file_views(StableDiffusionModel& model, torch::ScalarType dtype) {
  int64_t mapped = 0;
  for (torch::nn::Module* m : {static_cast<torch::nn::Module*>(model.unet.get()),
                               static_cast<torch::nn::Module*>(model.text_encoder.get()),
                               static_cast<torch::nn::Module*>(model.vae.get())}) {
    for (const auto& p : m->parameters()) {
      EXPECT_EQ(p.scalar_type(), dtype);
      mapped += is_file_mapped(p);
    }
  }
  return mapped;
}

TEST(WeightsAsStored, HalfCheckpointsGiveTheFp32ImagesBitForBit) {
  SDGEN_REQUIRE_SHARED();
  for (const auto dtype : {torch::kFloat16, torch::kBFloat16, torch::kFloat32}) {
    const std::string dir = dtype == torch::kFloat32 ? test::tiny_model_dir() : tiny_copy(dtype);
    auto reference = load(dir, false);
    auto lowmem = load(dir, true);
    EXPECT_FALSE(reference.weights_as_stored);
    EXPECT_TRUE(lowmem.weights_as_stored);
    EXPECT_EQ(lowmem.dtype, torch::kFloat32);
    EXPECT_EQ(file_views(reference, torch::kFloat32), 0);
    EXPECT_GT(file_views(lowmem, dtype), 100) << "weights copied instead of mapped";

    for (const char* sampler : {"euler", "dpmpp_2m"}) {
      const GenerationRequest request = test::golden_request(sampler);
      const auto a = generate(reference, request);
      const auto b = generate(lowmem, request);
      EXPECT_TRUE(torch::equal(a.latents, b.latents)) << dtype_name(dtype) << " " << sampler;
      EXPECT_TRUE(torch::equal(a.images_u8, b.images_u8)) << dtype_name(dtype) << " " << sampler;
    }
    // img2img runs the VAE encoder too.
    GenerationRequest i2i = test::golden_request("euler");
    i2i.init_image = generate(reference, i2i).images_u8[0].clone();
    i2i.strength = 0.6;
    EXPECT_TRUE(torch::equal(generate(reference, i2i).images_u8, generate(lowmem, i2i).images_u8))
        << dtype_name(dtype) << " img2img";
  }
}

// A LoRA merged into fp16 weights is W + scale * up @ down in float32 (as the
// fp32 path computes it) rounded once to fp16; un-merging puts the mapped file
// tensors back, bit for bit and without copies.
TEST(WeightsAsStored, LoraMergesRoundOnceAndRestoresTheFileViews) {
  SDGEN_REQUIRE_SHARED();
  const std::string lora_path = test::shared_dir() + "/golden/sd1-extras/lora_kohya.safetensors";
  if (!fs::exists(lora_path)) GTEST_SKIP() << lora_path << " missing; skipping";
  const std::string dir = tiny_copy(torch::kFloat16);
  auto reference = load(dir, false);
  auto lowmem = load(dir, true);
  const GenerationRequest request = test::golden_request("euler");
  const auto before = generate(lowmem, request);
  std::map<std::string, torch::Tensor> stored;
  // detach(): a tensor of its own on the same memory (merging replaces the
  // parameter's memory, not the memory itself).
  for (const auto& p : lowmem.unet->named_parameters()) stored[p.key()] = p.value().detach();

  const auto lora_a = read_lora(lora_path, reference);
  const auto lora_b = read_lora(lora_path, lowmem);
  LoraMerger merger_a(reference), merger_b(lowmem);
  merger_a.apply({{&lora_a, 0.8, 0.8}});
  merger_b.apply({{&lora_b, 0.8, 0.8}});
  EXPECT_EQ(merger_b.copies_kept(), 0u);
  int merged = 0;
  const auto ref_params = reference.unet->named_parameters();
  for (const auto& p : lowmem.unet->named_parameters()) {
    ASSERT_EQ(p.value().scalar_type(), torch::kFloat16) << p.key();
    const torch::Tensor expected = ref_params[p.key()].to(torch::kFloat16);
    EXPECT_TRUE(torch::equal(p.value(), expected)) << p.key();
    merged += !torch::equal(p.value(), stored[p.key()]);
  }
  EXPECT_GT(merged, 3);
  // The images differ by the fp16 rounding of the merged weights only.
  const auto a = generate(reference, request);
  const auto b = generate(lowmem, request);
  EXPECT_FALSE(torch::equal(b.images_u8, before.images_u8));
  const double levels = test::max_abs_diff(a.images_u8, b.images_u8);
  std::cout << "[lowmem] LoRA merged in fp16 vs fp32: max " << levels << " 8-bit levels\n";
  EXPECT_LE(levels, 2.0);

  merger_b.restore();
  for (const auto& p : lowmem.unet->named_parameters()) {
    EXPECT_EQ(p.value().data_ptr(), stored[p.key()].data_ptr()) << p.key();
    EXPECT_TRUE(torch::equal(p.value(), stored[p.key()])) << p.key();
  }
  EXPECT_TRUE(torch::equal(generate(lowmem, request).images_u8, before.images_u8));
}

TEST(WeightsAsStored, DtypeNames) {
  const torch::Device cpu(torch::kCPU), cuda("cuda");
  EXPECT_TRUE(weights_as_stored_from_name("fp32-lowmem", cpu));
  EXPECT_FALSE(weights_as_stored_from_name("fp32-lowmem", cuda));
  EXPECT_FALSE(weights_as_stored_from_name("fp32", cpu));
  EXPECT_FALSE(weights_as_stored_from_name("bf16", cpu));
  EXPECT_EQ(weights_as_stored_from_name("auto", cpu), !cpu_has_native_bf16());
  EXPECT_FALSE(weights_as_stored_from_name("auto", cuda));
  EXPECT_EQ(default_weights_as_stored(cpu), !cpu_has_native_bf16());
  EXPECT_EQ(dtype_from_name("fp32-lowmem", torch::kBFloat16), torch::kFloat32);
  EXPECT_EQ(parse_dtype_choice("FP32-LOWMEM"), DtypeChoice::fp32_lowmem);
  EXPECT_EQ(to_string(DtypeChoice::fp32_lowmem), "fp32-lowmem");
  EXPECT_THROW(dtype_from_name("fp16-lowmem", torch::kFloat32), Error);
}

// The estimate counts the stored bytes (half of fp32's for an fp16 file)
// from the files before loading and from the loaded parameters after.
TEST(WeightsAsStored, MemoryEstimateCountsStoredBytes) {
  SDGEN_REQUIRE_SHARED();
  const std::string dir = tiny_copy(torch::kFloat16);
  LoadOptions o;
  o.model_path = dir;
  o.weights_as_stored = true;
  const ModelFootprint files = inspect_model_files(o);
  const int64_t parameters =
      files.unet_parameters + files.vae_parameters + files.text_encoder_parameters;
  EXPECT_EQ(files.stored_weight_bytes, 2 * parameters);
  auto model = load(dir, true);
  EXPECT_EQ(model_footprint(model).stored_weight_bytes, files.stored_weight_bytes);

  MemorySettings fp32, lowmem;
  lowmem.weights_as_stored = true;
  const MemoryRequest request;
  const MemoryEstimate a = estimate_memory(files, fp32, request);
  const MemoryEstimate b = estimate_memory(files, lowmem, request);
  EXPECT_EQ(a.weights, 4 * parameters);
  // Only the peak stage's model keeps its pages mapped in: at least the
  // UNet's weights and activations, at most all stored weights.
  EXPECT_LE(b.weights, 2 * parameters);
  EXPECT_GE(b.weights + b.peak_activations(), 2 * files.unet_parameters + a.unet);
  EXPECT_LT(b.total, a.total);
}

// Through the binary: --dtype fp32-lowmem writes the --dtype fp32 PNG.
TEST(WeightsAsStored, CliWritesTheFp32Image) {
  SDGEN_REQUIRE_SHARED();
  const std::string dir = tiny_copy(torch::kFloat16);
  const std::string out = test::temp_dir("lowmem-cli");
  std::string log;
  for (const char* dtype : {"fp32", "fp32-lowmem"}) {
    const std::string cmd = test::binary_dir() + "/sdgen --model '" + dir +
                            "' -p 'a red cube' --steps 2 -W 64 -H 64 --seed 5 --dtype " + dtype +
                            " -o '" + out + "/" + dtype + ".png'";
    ASSERT_EQ(test::run(cmd, &log), 0) << cmd << "\n" << log;
  }
  EXPECT_TRUE(
      torch::equal(read_png(out + "/fp32.png").pixels, read_png(out + "/fp32-lowmem.png").pixels));
}

}  // namespace
}  // namespace sdgen
