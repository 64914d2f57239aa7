// The memory estimate (sdgen/memory_estimate.h): its shape (monotonic in size,
// batch, dtype; tiling bounds the VAE), its messages, the out-of-memory
// wording (the CUDA path cannot run here, its text is tested), the fake
// budget SDGEN_MEMORY_LIMIT_MB, and the `sdgen` binary refusing what does not
// fit before the model loads and per prompt-file line.

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "sdgen/memory_estimate.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

constexpr int64_t kMiB = 1024 * 1024;

// SD1.5: the default configs are its architecture; parameter counts from
// ../shared/data/manifests.json (sd15.single).
ModelFootprint sd15() {
  ModelFootprint m;
  m.unet_parameters = 859520964;
  m.vae_parameters = 83653863;
  m.text_encoder_parameters = 123060480;
  return m;
}

MemoryEstimate estimate(const MemoryRequest& r, torch::ScalarType dtype = torch::kFloat32,
                        torch::Device device = torch::kCPU) {
  MemorySettings s;
  s.device = device;
  s.dtype = dtype;
  s.vae_dtype = dtype;
  return estimate_memory(sd15(), s, r);
}

MemoryRequest request(int w, int h, int batch = 1) {
  MemoryRequest r;
  r.width = w;
  r.height = h;
  r.batch_size = batch;
  return r;
}

TEST(MemoryEstimate, SD15Magnitudes) {
  const auto e = estimate(request(512, 512));
  // 1.066 G parameters in fp32.
  EXPECT_NEAR(static_cast<double>(e.weights) / 1e9, 4.27, 0.02);
  EXPECT_EQ(e.peak_stage, "UNet + VAE decode");
  // Measured peak RSS of `sdgen --steps 1` on the CPU, libtorch 1.13 (README
  // "Memory, Ctrl-C and NaN"): the estimate is conservative but not absurd.
  const double measured_512 = 6216016.0 * 1024, measured_256 = 5251968.0 * 1024,
               measured_64 = 4637164.0 * 1024;
  EXPECT_GT(static_cast<double>(e.total), measured_512);
  EXPECT_LT(static_cast<double>(e.total), 1.5 * measured_512);
  const auto e256 = estimate(request(256, 256)), e64 = estimate(request(64, 64));
  EXPECT_GT(static_cast<double>(e256.total), measured_256);
  EXPECT_LT(static_cast<double>(e256.total), 1.5 * measured_256);
  EXPECT_GT(static_cast<double>(e64.total), measured_64);
  EXPECT_LT(static_cast<double>(e64.total), 1.5 * measured_64);
  EXPECT_EQ(e.total, e.weights + e.peak_activations() + e.overhead);
  std::cout << "[memory] SD1.5 512x512 fp32 CPU: weights " << format_bytes(e.weights) << ", UNet "
            << format_bytes(e.unet) << ", VAE decode " << format_bytes(e.vae_decode) << ", total "
            << format_bytes(e.total) << " (" << e.total / kMiB << " MiB; 256x256 "
            << e256.total / kMiB << " MiB, 64x64 " << e64.total / kMiB << " MiB)" << std::endl;
}

// --dtype fp32-lowmem (weights kept as stored, fp16 here): only the computing
// model's weights are resident, against the peak resident memory measured
// for sdgen-bench --dtype fp32-lowmem --steps 2 with the full-size random
// SD1.5 fp16 checkpoint (2,845,796 kB on the 2-core AVX2 EPYC, libtorch
// 1.13; docs/performance.md, issue 33).
TEST(MemoryEstimate, SD15WeightsAsStored) {
  ModelFootprint m = sd15();
  m.stored_weight_bytes = 2 * (m.unet_parameters + m.vae_parameters + m.text_encoder_parameters);
  MemorySettings s;
  s.weights_as_stored = true;
  const auto e = estimate_memory(m, s, request(512, 512));
  EXPECT_EQ(e.weights, 2 * m.unet_parameters);  // the largest model's
  EXPECT_EQ(e.peak_stage, "UNet + VAE decode");
  const double measured = 2845796.0 * 1024;
  EXPECT_GT(static_cast<double>(e.total), measured);
  EXPECT_LT(static_cast<double>(e.total), 1.5 * measured);
  EXPECT_LT(e.total, estimate(request(512, 512)).total);
  std::cout << "[memory] SD1.5 512x512 fp32-lowmem CPU: weights " << format_bytes(e.weights)
            << ", UNet " << format_bytes(e.unet) << ", VAE decode " << format_bytes(e.vae_decode)
            << ", total " << format_bytes(e.total) << " (measured peak "
            << format_bytes(int64_t(measured)) << ")" << std::endl;
}

// SDXL base 1.0 (stable-diffusion-xl-base-1.0's configs; parameter counts
// from ../shared/data/manifests.json sdxl.params): 1024x1024 in fp32 on the
// CPU, against the peak resident memory measured for `sdgen --steps 1` with
// the full-size random SDXL (18,422,736 kB on the 2-core AVX2 EPYC, libtorch
// 1.13; docs/performance.md).
TEST(MemoryEstimate, SDXLMagnitudes) {
  ModelFootprint m;
  m.unet.block_out_channels = {320, 640, 1280};
  m.unet.down_block_types = {"DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"};
  m.unet.up_block_types = {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"};
  m.unet.transformer_layers_per_block = {1, 2, 10};
  m.unet.attention_head_dim = {5, 10, 20};
  m.unet.cross_attention_dim = 2048;
  m.unet.use_linear_projection = true;
  m.unet.addition_embed_type = "text_time";
  m.unet.addition_time_embed_dim = 256;
  m.unet.projection_class_embeddings_input_dim = 2816;
  m.unet.sample_size = 128;
  m.vae.scaling_factor = 0.13025;
  CLIPTextConfig big_g;
  big_g.hidden_size = 1280;
  big_g.intermediate_size = 5120;
  big_g.num_hidden_layers = 32;
  big_g.num_attention_heads = 20;
  big_g.with_projection = true;
  big_g.projection_dim = 1280;
  m.text_encoder_2 = big_g;
  m.unet_parameters = 2567463684;
  m.vae_parameters = 83653863;
  m.text_encoder_parameters = 123060480 + 694659840;
  MemorySettings s;
  const auto e = estimate_memory(m, s, request(1024, 1024));
  EXPECT_NEAR(static_cast<double>(e.weights) / 1e9, 13.9, 0.1);  // 3.47 G parameters in fp32
  const double measured = 18422736.0 * 1024;
  EXPECT_GT(static_cast<double>(e.total), measured);
  EXPECT_LT(static_cast<double>(e.total), 1.5 * measured);
  std::cout << "[memory] SDXL 1024x1024 fp32 CPU: weights " << format_bytes(e.weights) << ", UNet "
            << format_bytes(e.unet) << ", VAE decode " << format_bytes(e.vae_decode) << ", total "
            << format_bytes(e.total) << " (measured peak " << format_bytes(int64_t(measured))
            << ", ratio " << static_cast<double>(e.total) / measured << ")" << std::endl;
}

TEST(MemoryEstimate, Monotonic) {
  const auto small = estimate(request(512, 512)), big = estimate(request(1024, 1024));
  EXPECT_GT(big.vae_decode, 3 * small.vae_decode);
  EXPECT_GT(big.unet, 3 * small.unet);
  EXPECT_GT(estimate(request(512, 512, 4)).total, small.total);
  EXPECT_LT(estimate(request(512, 512), torch::kBFloat16).total, small.total);
  MemoryRequest unguided = request(512, 512);
  unguided.guided = false;
  EXPECT_LT(estimate(unguided).unet, small.unet);
  MemoryRequest img2img = request(512, 512);
  img2img.img2img = true;
  EXPECT_GT(estimate(img2img).vae_encode, 0);
  EXPECT_EQ(small.vae_encode, 0);
}

TEST(MemoryEstimate, TilingBoundsTheDecoder) {
  MemoryRequest r = request(2048, 2048);
  const auto plain = estimate(r);
  r.vae_tiling = true;
  const auto tiled = estimate(r);
  EXPECT_LT(tiled.vae_decode * 4, plain.vae_decode);
  // A 512x512 request is one tile: tiling changes nothing.
  MemoryRequest one = request(512, 512);
  one.vae_tiling = true;
  EXPECT_EQ(estimate(one).vae_decode, estimate(request(512, 512)).vae_decode);
}

TEST(MemoryEstimate, CheckMessage) {
  MemorySettings s;
  const MemoryRequest r = request(1024, 1024, 2);
  const auto e = estimate_memory(sd15(), s, r);
  EXPECT_EQ(memory_check_message(e, {e.total + 1, "MemAvailable"}, s, r), "");
  EXPECT_EQ(memory_check_message(e, {-1, ""}, s, r), "");  // unknown: no check
  const std::string m = memory_check_message(e, {3 * 1024 * kMiB, "MemAvailable"}, s, r);
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  for (const char* word :
       {"not enough memory", "1024x1024, batch 2", "fp32 on cpu", "3.0 GiB", "MemAvailable",
        "weights", "a smaller --batch-size", "a smaller size (-W/-H)", "--vae-tiling",
        "--dtype bf16", "--no-memory-check"})
    EXPECT_NE(m.find(word), std::string::npos) << "'" << word << "' missing from: " << m;
  EXPECT_EQ(m.find("--device cpu"), std::string::npos) << m;

  // LoRA originals kept as copies (GPU merges) add to the total and are named.
  MemoryRequest with_lora = r;
  with_lora.lora_copy_bytes = 512 * kMiB;
  const auto el = estimate_memory(sd15(), s, with_lora);
  EXPECT_EQ(el.total, e.total + 512 * kMiB);
  EXPECT_EQ(el.peak_activations(), e.peak_activations());
  const std::string ml = memory_check_message(el, {3 * 1024 * kMiB, "MemAvailable"}, s, with_lora);
  EXPECT_NE(ml.find("LoRA originals 512 MiB"), std::string::npos) << ml;

  // The weights alone (before loading a prompt file): no size advice.
  MemoryEstimate w = e;
  w.total = w.weights + w.overhead;
  w.peak_stage.clear();
  const std::string mw = memory_check_message(w, {1024 * kMiB, "SDGEN_MEMORY_LIMIT_MB"}, s, r);
  EXPECT_NE(mw.find("the model's weights need about 4.0 GiB in fp32"), std::string::npos) << mw;
  EXPECT_EQ(mw.find("-W/-H"), std::string::npos) << mw;
}

TEST(MemoryEstimate, FormatBytes) {
  EXPECT_EQ(format_bytes(0), "0 MiB");
  EXPECT_EQ(format_bytes(410 * kMiB), "410 MiB");
  EXPECT_EQ(format_bytes(3 * 1024 * kMiB + 200 * kMiB), "3.2 GiB");
}

TEST(MemoryEstimate, FakeLimitFromEnvironment) {
  ::setenv("SDGEN_MEMORY_LIMIT_MB", "1500", 1);
  const auto a = available_memory(torch::kCPU, 123);
  ::unsetenv("SDGEN_MEMORY_LIMIT_MB");
  EXPECT_EQ(a.bytes, 1500 * kMiB);  // the whole budget, weights included
  EXPECT_EQ(a.source, "SDGEN_MEMORY_LIMIT_MB");
  const auto real = available_memory(torch::kCPU);
  EXPECT_GT(real.bytes, 0);
  EXPECT_EQ(real.source, "MemAvailable");
}

TEST(MemoryEstimate, OutOfMemoryErrors) {
  const c10::SourceLocation where{__func__, __FILE__, static_cast<uint32_t>(__LINE__)};
  EXPECT_TRUE(is_out_of_memory(c10::OutOfMemoryError(
      where, "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total capacity)")));
  EXPECT_TRUE(is_out_of_memory(c10::Error(where, "CUDA error: out of memory")));
  EXPECT_TRUE(is_out_of_memory(c10::Error(where, "cuDNN error: CUDNN_STATUS_ALLOC_FAILED")));
  EXPECT_TRUE(is_out_of_memory(std::bad_alloc()));
  EXPECT_FALSE(
      is_out_of_memory(c10::Error(where, "Expected all tensors to be on the same device")));
  EXPECT_FALSE(is_out_of_memory(std::runtime_error("disk full")));

  MemorySettings s;
  s.device = torch::Device(torch::kCUDA, 0);
  s.dtype = s.vae_dtype = torch::kFloat16;
  const MemoryRequest r = request(1536, 1536, 4);
  const std::string m = out_of_memory_message(estimate_memory(sd15(), s, r), s, r);
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  for (const char* word :
       {"out of memory on cuda:0", "1536x1536, batch 4", "fp16", "estimated need about",
        "a smaller --batch-size", "-W/-H", "--vae-tiling", "--device cpu"})
    EXPECT_NE(m.find(word), std::string::npos) << "'" << word << "' missing from: " << m;
  EXPECT_EQ(m.find("--dtype"), std::string::npos) << m;  // already fp16
}

TEST(MemoryEstimate, InspectFilesMatchesLoadedModel) {
  SDGEN_REQUIRE_SHARED();
  const ModelFootprint loaded = model_footprint(test::tiny_model());
  LoadOptions folder;
  folder.model_path = test::tiny_model_dir();
  const ModelFootprint f = inspect_model_files(folder);
  EXPECT_EQ(f.unet_parameters, loaded.unet_parameters);
  EXPECT_EQ(f.vae_parameters, loaded.vae_parameters);
  EXPECT_EQ(f.text_encoder_parameters, loaded.text_encoder_parameters);
  EXPECT_EQ(f.unet.block_out_channels, loaded.unet.block_out_channels);
  LoadOptions single;
  single.model_path = test::tiny_model_file();
  single.config_dir = test::tiny_model_dir();
  const ModelFootprint s = inspect_model_files(single);
  EXPECT_EQ(s.unet_parameters, loaded.unet_parameters);
  EXPECT_EQ(s.vae_parameters, loaded.vae_parameters);
  // The single file's text encoder may carry buffers (position ids) the module does not.
  EXPECT_GE(s.text_encoder_parameters, loaded.text_encoder_parameters);
  EXPECT_LE(s.text_encoder_parameters, loaded.text_encoder_parameters + 1000);
}

TEST(MemoryEstimate, InspectFilesMatchesLoadedSDXL) {
  const std::string dir = test::shared_dir() + "/models/sdxl-tiny";
  if (!std::filesystem::exists(dir + "/model_index.json")) GTEST_SKIP() << "no " << dir;
  LoadOptions folder;
  folder.model_path = dir;
  const ModelFootprint loaded = model_footprint(load_model(folder));
  ASSERT_TRUE(loaded.text_encoder_2.has_value());
  for (const bool single_file : {false, true}) {
    LoadOptions o;
    o.model_path = single_file ? dir + ".safetensors" : dir;
    if (single_file) o.config_dir = dir;
    const ModelFootprint f = inspect_model_files(o);
    ASSERT_TRUE(f.text_encoder_2.has_value()) << o.model_path;
    EXPECT_EQ(f.text_encoder_2->hidden_size, loaded.text_encoder_2->hidden_size);
    EXPECT_EQ(f.unet_parameters, loaded.unet_parameters) << o.model_path;
    EXPECT_EQ(f.vae_parameters, loaded.vae_parameters) << o.model_path;
    // Both encoders (the single file's may carry position-id buffers too).
    EXPECT_GE(f.text_encoder_parameters, loaded.text_encoder_parameters) << o.model_path;
    EXPECT_LE(f.text_encoder_parameters, loaded.text_encoder_parameters + 1000) << o.model_path;
    EXPECT_EQ(f.unet.transformer_layers_per_block, loaded.unet.transformer_layers_per_block);
  }
}

// ---- through the binary --------------------------------------------------------

std::string sdgen_cmd(const std::string& env, const std::string& args) {
  return env + " " + test::binary_dir() + "/sdgen --model '" + test::tiny_model_dir() +
         "' --steps 2 --seed 1 --threads 1 -q " + args;
}

TEST(MemoryCheckCLI, RefusesBeforeLoadingAndOverrides) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("memcheck");
  const std::string out = dir + "/a.png";
  std::string log;
  EXPECT_EQ(test::run(sdgen_cmd("SDGEN_MEMORY_LIMIT_MB=100", "-p cat -o '" + out + "'"), &log), 1)
      << log;
  EXPECT_NE(log.find("sdgen: error: not enough memory: 512x512, batch 1"), std::string::npos)
      << log;
  EXPECT_NE(log.find("100 MiB available (SDGEN_MEMORY_LIMIT_MB)"), std::string::npos) << log;
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
  EXPECT_FALSE(fs::exists(out));
  // --no-memory-check runs it anyway.
  EXPECT_EQ(test::run(sdgen_cmd("SDGEN_MEMORY_LIMIT_MB=100",
                                "-W 64 -H 64 --no-memory-check -p cat -o '" + out + "'"),
                      &log),
            0)
      << log;
  EXPECT_TRUE(fs::exists(out));
}

TEST(MemoryCheckCLI, PromptFileLineTooLarge) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("memcheck");
  const std::string prompts = dir + "/prompts.txt";
  std::ofstream(prompts) << "a cat\n{\"prompt\": \"a dog\", \"width\": 4096, \"height\": 4096}\n"
                            "a bird\n";
  std::string log;
  // The tiny model fits in 1 GiB at 64x64, not with a 4096x4096 VAE decode.
  EXPECT_EQ(
      test::run(sdgen_cmd("SDGEN_MEMORY_LIMIT_MB=1024", "-W 64 -H 64 --prompt-file '" + prompts +
                                                            "' -o '" + dir + "/{index}.png'"),
                &log),
      1)
      << log;
  EXPECT_NE(log.find("line 2: not enough memory: 4096x4096, batch 1"), std::string::npos) << log;
  EXPECT_NE(log.find("--vae-tiling"), std::string::npos) << log;
  EXPECT_TRUE(fs::exists(dir + "/0.png"));
  EXPECT_FALSE(fs::exists(dir + "/1.png"));
  EXPECT_TRUE(fs::exists(dir + "/2.png"));
}

}  // namespace
}  // namespace sdgen
