// The `sdgen-train` tool end to end on a tiny recipe: `all` writes a model
// folder sdgen loads, `finetune` trains it on, the precision of both follows
// the CPU (bf16 autocast only where the CPU has native bf16) unless told, and
// bad options (a device this machine lacks among them) stop it with an error
// before any work.

#include <filesystem>

#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "sdgen/model.h"
#include "sdgen/runtime.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

std::string train_bin() { return test::binary_dir() + "/sdgen-train"; }

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(TrainCli, TinyRecipeFinetuneAndPrecision) {
  const fs::path dir = test::temp_dir("train_cli");
  const std::string model = (dir / "model").string();
  const std::string native = cpu_has_native_bf16() ? "bf16 autocast" : "fp32";
  std::string out;

  ASSERT_EQ(test::run(train_bin() + " all --work " + (dir / "work").string() + " --out " + model +
                          " --captions 300 --vocab-size 100 --vae-steps 2 --vae-batch 1"
                          " --vae-crop 64 --decoder-steps 1 --decoder-batch 1 --decoder-crop 64"
                          " --train-images 4 --unet-batch 2 --unet-steps 2 --threads 1",
                      &out),
            0)
      << out;
  EXPECT_TRUE(has(out, "1 threads, " + native + ", work folder")) << out;
  LoadOptions load;
  load.model_path = model;
  EXPECT_EQ(load_model(load).layout, "diffusers");

  auto finetune = [&](const std::string& name, const std::string& extra) {
    return test::run(train_bin() + " finetune --model " + model + " --work " +
                         (dir / ("work-" + name)).string() + " --out " + (dir / name).string() +
                         " --steps 1 --batch 2 --images 2 --threads 1" + extra,
                     &out);
  };
  // The default follows the CPU; --fp32 and --bf16 force one.
  ASSERT_EQ(finetune("more", ""), 0) << out;
  EXPECT_TRUE(has(out, native + ", fine-tuning")) << out;
  EXPECT_TRUE(has(out, "EMA weights of step 1 of 1")) << out;
  load.model_path = (dir / "more").string();
  EXPECT_EQ(load_model(load).layout, "diffusers");
  ASSERT_EQ(finetune("fp32", " --fp32"), 0) << out;
  EXPECT_TRUE(has(out, "1 threads, fp32, fine-tuning")) << out;
  ASSERT_EQ(finetune("bf16", " --bf16 --pyramid-noise 0.6 --high-noise-share 0.5 --swap-pairs 0.5"),
            0)
      << out;
  EXPECT_TRUE(has(out, "1 threads, bf16 autocast, fine-tuning")) << out;

  // v prediction on the zero-SNR schedule: the folder written says so, a
  // further run from it keeps it, sdgen draws from it; a work folder resumed
  // with another target, and epsilon at zero SNR, are refused.
  ASSERT_EQ(finetune("v", " --prediction v_prediction --terminal-snr zero"), 0) << out;
  EXPECT_TRUE(has(out, "v_prediction, zero terminal SNR")) << out;
  const auto v_config =
      read_json_file((dir / "v" / "scheduler" / "scheduler_config.json").string());
  EXPECT_EQ(v_config.at("prediction_type"), "v_prediction");
  EXPECT_EQ(v_config.at("rescale_betas_zero_snr"), true);
  EXPECT_EQ(v_config.at("timestep_spacing"), "trailing");
  ASSERT_EQ(test::run(train_bin() + " finetune --model " + (dir / "v").string() + " --work " +
                          (dir / "work-v-more").string() + " --out " + (dir / "v-more").string() +
                          " --steps 1 --batch 2 --images 2 --threads 1",
                      &out),
            0)
      << out;
  EXPECT_TRUE(has(out, "v_prediction, zero terminal SNR")) << out;
  EXPECT_EQ(read_json_file((dir / "v-more" / "scheduler" / "scheduler_config.json").string())
                .at("prediction_type"),
            "v_prediction");
  const auto png = (dir / "v.png").string();
  ASSERT_EQ(test::run(test::binary_dir() + "/sdgen --model " + (dir / "v").string() +
                          " --prompt \"a red circle\" --steps 3 --threads 1 -o " + png,
                      &out),
            0)
      << out;
  EXPECT_TRUE(fs::exists(png));
  EXPECT_NE(finetune("v", " --prediction epsilon"), 0);
  EXPECT_TRUE(has(out, "trains v_prediction, zero terminal SNR, not epsilon")) << out;
  EXPECT_NE(finetune("epszero", " --prediction epsilon --terminal-snr zero"), 0);
  EXPECT_TRUE(has(out, "needs v_prediction")) << out;
  EXPECT_NE(finetune("vbad", " --prediction sample"), 0);

  // Refused before any work: both precisions, noise options out of range (the
  // same checks in `all` and `finetune`), the model folder as the output.
  EXPECT_NE(finetune("both", " --fp32 --bf16"), 0);
  EXPECT_TRUE(has(out, "excludes")) << out;
  EXPECT_NE(finetune("device", " --device tpu"), 0);
  EXPECT_TRUE(has(out, "expected auto, cpu, cuda or cuda:N")) << out;
  if (!torch::cuda::is_available()) {
    EXPECT_NE(finetune("device", " --device cuda"), 0);
    EXPECT_TRUE(has(out, "CUDA is not available")) << out;
  }
  EXPECT_NE(finetune("pyramid", " --pyramid-noise 1.5"), 0);
  EXPECT_TRUE(has(out, "--pyramid-noise")) << out;
  EXPECT_NE(finetune("swap", " --swap-pairs 2"), 0);
  EXPECT_TRUE(has(out, "--swap-pairs")) << out;
  EXPECT_NE(test::run(train_bin() + " all --work " + (dir / "work").string() + " --out " + model +
                          " --noise-offset 2",
                      &out),
            0);
  EXPECT_TRUE(has(out, "--noise-offset")) << out;
  EXPECT_EQ(test::run(train_bin() + " finetune --model " + model + " --work " +
                          (dir / "work-self").string() + " --out " + model,
                      &out),
            1);
  EXPECT_TRUE(has(out, "--out must be another folder")) << out;
  for (const std::string name : {"both", "device", "pyramid", "self", "epszero", "vbad"}) {
    EXPECT_FALSE(fs::exists(dir / name)) << name;
    EXPECT_FALSE(fs::exists(dir / ("work-" + name))) << name;
  }
}

}  // namespace
}  // namespace sdgen
