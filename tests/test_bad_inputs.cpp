// Bad inputs, table-tested (issue 7): every case runs the real `sdgen` binary
// on files it makes for itself and checks that sdgen
//   - exits with the expected code (not a signal, not a hang: `timeout 120`),
//   - prints exactly one "sdgen: error:" line holding the expected words (the
//     file, key, flag or line at fault), and nothing else on stderr except the
//     documented batch summary of a prompt-file run,
//   - shows no crash ("terminate called", libtorch stack traces),
//   - leaves no output or temporary file behind.
// Cases that load the tiny model are skipped without the reference data; all
// others use a model path that does not exist, which also proves that sdgen
// checks flags, output paths, init images and prompt files before it loads a
// model (a bad flag fails at once, not after a 10-second load).

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "pickle_writer.h"
#include "sdgen/image_io.h"
#include "sdgen/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

std::string q(const std::string& s) { return "'" + s + "'"; }

void write_file(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A safetensors file from raw parts: the 8-byte little-endian header length
// (header.size() unless `header_len` is given), the header text and the data.
void write_raw_safetensors(const std::string& path, const std::string& header,
                           const std::string& data, int64_t header_len = -1) {
  const uint64_t n = header_len >= 0 ? static_cast<uint64_t>(header_len) : header.size();
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  write_file(path, bytes + header + data);
}

using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;

// The tiny single-file checkpoint's tensors (copies), for files that are
// almost right.
Tensors tiny_tensors() {
  SafeTensorsFile file(test::tiny_model_file());
  Tensors out;
  for (const auto& name : file.names()) out.emplace_back(name, file.tensor(name).clone());
  return out;
}

// The tiny SDXL single file's tensors (copies), renamed by `rename` (""
// drops a tensor).
Tensors sdxl_tensors(const std::function<std::string(const std::string&)>& rename) {
  SafeTensorsFile file(test::shared_dir() + "/models/sdxl-tiny.safetensors");
  Tensors out;
  for (const auto& name : file.names()) {
    const std::string to = rename(name);
    if (!to.empty()) out.emplace_back(to, file.tensor(name).clone());
  }
  return out;
}

bool starts(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

torch::Tensor image(int h, int w, int c) {
  return torch::arange(h * w * c, torch::kInt64).remainder(251).to(torch::kUInt8).view({h, w, c});
}

// Where a case runs: `in/` holds the files it makes, `out/` is where outputs
// would go.
struct Ctx {
  std::string dir, in, out;
  std::string nomodel() const { return in + "/no-model.safetensors"; }
  // Flags every case gets unless it overrides them; --model points at nothing.
  std::string base() const { return "--model " + q(nomodel()) + " -o " + q(out + "/img.png"); }
  std::string tiny() const {
    return "--model " + q(test::tiny_model_dir()) + " -o " + q(out + "/img.png");
  }
  std::string tiny_file(const std::string& path) const {
    return "--model " + q(path) + " --config " + q(test::tiny_model_dir()) + " -o " +
           q(out + "/img.png");
  }
  std::string file(const std::string& name, const std::string& bytes) const {
    write_file(in + "/" + name, bytes);
    return in + "/" + name;
  }
  std::string png(const std::string& name, const torch::Tensor& pixels,
                  const PngText& text = {}) const {
    write_png(in + "/" + name, pixels, text);
    return in + "/" + name;
  }
};

enum class Model { none, tiny };

struct BadCase {
  std::string name;
  Model model = Model::none;
  std::function<std::string(const Ctx&)> setup;  // makes the files, returns the arguments
  int code = 2;
  std::vector<std::string> words;         // all must be in the error line (or the note, for code 0)
  bool batch = false;                     // a prompt-file run: also one "sdgen: done" summary line
  bool as_nobody = false;                 // run without root's power to read anything
  std::vector<std::string> outputs = {};  // files a successful case writes under out/
};

const std::string kParams =
    "a red fox\nSteps: 2, Sampler: DDIM, CFG scale: 7, Seed: 3, Size: 64x64, Model hash: "
    "0123456789";

std::vector<BadCase> cases() {
  std::vector<BadCase> c;
  auto add = [&c](BadCase b) { c.push_back(std::move(b)); };

  // ---- the model (exit 3) ------------------------------------------------
  add({"missing_model",
       Model::none,
       [](const Ctx& x) { return x.base() + " -p x"; },
       3,
       {"no-model.safetensors", "model not found"}});
  add({"folder_without_model_index",
       Model::none,
       [](const Ctx& x) {
         x.file("empty/readme.txt", "not a model");
         return "--model " + q(x.in + "/empty") + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"empty", "is a folder without model_index.json"}});
  add({"folder_named_like_a_file",
       Model::none,
       [](const Ctx& x) {
         fs::create_directories(x.in + "/model.safetensors");
         return "--model " + q(x.in + "/model.safetensors") + " -o " + q(x.out + "/img.png") +
                " -p x";
       },
       3,
       {"model.safetensors", "is a folder", "model_index.json"}});
  add({"model_is_a_fifo",
       Model::none,
       [](const Ctx& x) {
         const std::string p = x.in + "/fifo.safetensors";
         if (::mkfifo(p.c_str(), 0600) != 0) throw std::runtime_error("mkfifo " + p);
         return "--model " + q(p) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"fifo.safetensors", "not a regular file"}});
  add({"model_is_a_device",
       Model::none,
       [](const Ctx& x) { return "--model /dev/zero -o " + q(x.out + "/img.png") + " -p x"; },
       3,
       {"/dev/zero", "not a regular file"}});
  add({"unreadable_model",
       Model::none,
       [](const Ctx& x) {
         const std::string p = x.file("locked.safetensors", "{}");
         ::chmod(p.c_str(), 0);
         return "--model " + q(p) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"locked.safetensors", "Permission denied"},
       false,
       /*as_nobody=*/true});
  add({"pickle_checkpoint",
       Model::none,
       [](const Ctx& x) {
         return "--model " + q(x.file("model.ckpt", "PK\x03\x04 pickle")) + " -o " +
                q(x.out + "/img.png") + " -p x";
       },
       3,
       {"model.ckpt", "pickle", "sdgen convert", "model.safetensors"}});
  add({"empty_safetensors",
       Model::none,
       [](const Ctx& x) {
         return "--model " + q(x.file("empty.safetensors", "")) + " -o " + q(x.out + "/img.png") +
                " -p x";
       },
       3,
       {"empty.safetensors", "not a valid safetensors file", "0 bytes"}});
  add({"truncated_safetensors",
       Model::tiny,
       [](const Ctx& x) {
         const std::string bytes = read_file(test::tiny_model_file());
         return x.tiny_file(x.file("cut.safetensors", bytes.substr(0, bytes.size() / 2))) + " -p x";
       },
       3,
       {"cut.safetensors", "outside the data section", "truncated"}});
  // LoRAs (the kohya LoRA of ../shared/golden/sd1-extras, or broken copies).
  const std::string kohya = test::shared_dir() + "/golden/sd1-extras/lora_kohya.safetensors";
  auto lora_tensors = [kohya](const std::function<void(Tensors&)>& change) {
    SafeTensorsFile file(kohya);
    Tensors out;
    for (const auto& name : file.names()) out.emplace_back(name, file.tensor(name).clone());
    change(out);
    return out;
  };
  add({"lora_unknown_name",
       Model::tiny,
       [](const Ctx& x) {
         fs::create_directories(x.in + "/loras");
         return x.tiny() + " --lora-dir " + q(x.in + "/loras") + " -p 'a cat <lora:missing:0.5>'";
       },
       2,
       {"unknown LoRA 'missing'", "/loras"}});
  add({"lora_for_sdxl_on_sd1",
       Model::tiny,
       [](const Ctx& x) {
         const std::string lora =
             test::shared_dir() + "/golden/sdxl-extras/lora_kohya_sdxl.safetensors";
         return x.tiny() + " --lora " + q(x.file("xl-style.safetensors", read_file(lora))) +
                " -p cat";
       },
       2,
       {"xl-style.safetensors", "SDXL LoRA", "SD1.x"}});
  add({"lora_shape_mismatch",
       Model::tiny,
       [lora_tensors](const Ctx& x) {
         const std::string p = x.in + "/wide.safetensors";
         write_safetensors(p, lora_tensors([](Tensors& t) {
                             for (auto& [name, tensor] : t)
                               if (name ==
                                   "lora_unet_down_blocks_0_attentions_0_transformer_"
                                   "blocks_0_attn1_to_q.lora_up.weight")
                                 tensor = torch::zeros({48, 4});
                           }));
         return x.tiny() + " --lora " + q(p) + " -p cat";
       },
       2,
       {"wide.safetensors", "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "does not fit"}});
  add({"lora_matching_no_layer",
       Model::tiny,
       [lora_tensors](const Ctx& x) {
         const std::string p = x.in + "/other.safetensors";
         write_safetensors(p, lora_tensors([](Tensors& t) {
                             for (auto& [name, tensor] : t) name = "lora_unet_nowhere_" + name;
                           }));
         return x.tiny() + " --lora " + q(p) + " -p cat";
       },
       2,
       {"other.safetensors", "none of its 90 LoRA layers"}});
  add({"lora_with_nan",
       Model::tiny,
       [lora_tensors](const Ctx& x) {
         const std::string p = x.in + "/nan.safetensors";
         write_safetensors(p, lora_tensors([](Tensors& t) {
                             t.back().second = t.back().second.clone().fill_(NAN);
                           }));
         return x.tiny() + " --lora " + q(p) + " -p cat";
       },
       2,
       {"nan.safetensors", "NaN or Inf"}});
  add({"lora_truncated",
       Model::tiny,
       [kohya](const Ctx& x) {
         const std::string bytes = read_file(kohya);
         return x.tiny() + " --lora " +
                q(x.file("cut-lora.safetensors", bytes.substr(0, bytes.size() / 2))) + " -p cat";
       },
       2,
       {"cut-lora.safetensors", "truncated"}});
  add({"lora_pickled",
       Model::tiny,
       [](const Ctx& x) {
         x.file("loras/old.pt", "PK\x03\x04 pickle");
         return x.tiny() + " --lora-dir " + q(x.in + "/loras") + " -p 'a cat <lora:old>'";
       },
       2,
       {"old.pt", "pickled", "sdgen convert", "old.safetensors"}});
  // SDXL files (the tiny SDXL of ../shared, architecture from its folder).
  const std::string sdxl_dir = test::shared_dir() + "/models/sdxl-tiny";
  add({"sdxl_truncated",
       Model::tiny,
       [sdxl_dir](const Ctx& x) {
         const std::string bytes = read_file(test::shared_dir() + "/models/sdxl-tiny.safetensors");
         return "--model " + q(x.file("cut-xl.safetensors", bytes.substr(0, bytes.size() / 3))) +
                " --config " + q(sdxl_dir) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"cut-xl.safetensors", "truncated"}});
  add({"sdxl_without_second_text_encoder",
       Model::tiny,
       [sdxl_dir](const Ctx& x) {
         const std::string p = x.in + "/no-bigg.safetensors";
         write_safetensors(p, sdxl_tensors([](const std::string& n) {
                             return starts(n, "conditioner.embedders.1.") ? "" : n;
                           }));
         return "--model " + q(p) + " --config " + q(sdxl_dir) + " -o " + q(x.out + "/img.png") +
                " -p x";
       },
       3,
       {"no-bigg.safetensors", "without its second text encoder", "conditioner.embedders.1"}});
  add({"sdxl_refiner",
       Model::tiny,
       [](const Ctx& x) {
         // A refiner's layout: one OpenCLIP encoder, as conditioner.embedders.0.
         const std::string p = x.in + "/refiner.safetensors";
         write_safetensors(p, sdxl_tensors([](const std::string& n) -> std::string {
                             if (starts(n, "conditioner.embedders.0.")) return "";
                             if (starts(n, "conditioner.embedders.1."))
                               return "conditioner.embedders.0." + n.substr(24);
                             return n;
                           }));
         return "--model " + q(p) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"refiner.safetensors", "SDXL refiner"}});
  add({"sdxl_lora_as_model",
       Model::tiny,
       [](const Ctx& x) {
         const std::string lora =
             test::shared_dir() + "/golden/sdxl-extras/lora_kohya_sdxl.safetensors";
         return "--model " + q(x.file("style-lora.safetensors", read_file(lora))) + " -o " +
                q(x.out + "/img.png") + " -p x";
       },
       3,
       {"style-lora.safetensors", "looks like a LoRA"}});
  add({"header_length_past_end",
       Model::none,
       [](const Ctx& x) {
         const std::string p = x.in + "/long.safetensors";
         write_raw_safetensors(p, "{}", "", 1000000);
         return "--model " + q(p) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"long.safetensors", "header length 1000000 is larger than the file"}});
  add({"header_not_json",
       Model::none,
       [](const Ctx& x) {
         const std::string p = x.in + "/text.safetensors";
         write_raw_safetensors(p, "this is not JSON", "");
         return "--model " + q(p) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"text.safetensors", "header is not valid JSON"}});
  add({"header_not_object",
       Model::none,
       [](const Ctx& x) {
         const std::string p = x.in + "/list.safetensors";
         write_raw_safetensors(p, "[1, 2, 3]", "");
         return "--model " + q(p) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"list.safetensors", "not a JSON object"}});
  add({"offsets_overlap",
       Model::none,
       [](const Ctx& x) {
         const std::string p = x.in + "/overlap.safetensors";
         write_raw_safetensors(p,
                               R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               std::string(12, '\0'));
         return "--model " + q(p) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"overlap.safetensors", "tensors 'a' and 'b' overlap"}});
  add({"offsets_out_of_range",
       Model::none,
       [](const Ctx& x) {
         const std::string p = x.in + "/range.safetensors";
         write_raw_safetensors(p, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                               std::string(8, '\0'));
         return "--model " + q(p) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"range.safetensors", "tensor 'w'", "outside the data section"}});
  add({"offsets_disagree_with_shape",
       Model::none,
       [](const Ctx& x) {
         const std::string p = x.in + "/size.safetensors";
         write_raw_safetensors(p, R"({"w":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}})",
                               std::string(8, '\0'));
         return "--model " + q(p) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"size.safetensors", "tensor 'w'", "holds 8 bytes", "need 6"}});
  add({"unknown_dtype",
       Model::none,
       [](const Ctx& x) {
         const std::string p = x.in + "/q4.safetensors";
         write_raw_safetensors(p, R"({"w":{"dtype":"Q4_K","shape":[4],"data_offsets":[0,2]}})",
                               std::string(2, '\0'));
         return "--model " + q(p) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"q4.safetensors", "tensor 'w'", "unsupported dtype 'Q4_K'"}});
  add({"text_encoder_only_file",
       Model::tiny,
       [](const Ctx& x) {
         Tensors keep;
         for (auto& [k, t] : tiny_tensors())
           if (k.rfind("cond_stage_model.", 0) == 0) keep.emplace_back(k, t);
         const std::string p = x.in + "/clip.safetensors";
         write_safetensors(p, keep);
         return x.tiny_file(p) + " -p x";
       },
       3,
       {"clip.safetensors", "not a Stable Diffusion", "only text-encoder weights"}});
  add({"sdxl_file_one_text_encoder",
       Model::none,
       [](const Ctx& x) {
         const std::string p = x.in + "/xl.safetensors";
         write_safetensors(
             p, {{"conditioner.embedders.0.transformer.w", torch::zeros({2})},
                 {"model.diffusion_model.input_blocks.0.0.weight", torch::zeros({1, 1, 1, 1})}});
         return "--model " + q(p) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"xl.safetensors", "SDXL", "without its second text encoder"}});
  add({"tensor_with_wrong_shape",
       Model::tiny,
       [](const Ctx& x) {
         auto all = tiny_tensors();
         for (auto& [k, t] : all)
           if (k == "model.diffusion_model.time_embed.0.weight") t = t.t().contiguous();
         const std::string p = x.in + "/shape.safetensors";
         write_safetensors(p, all);
         return x.tiny_file(p) + " -p x";
       },
       3,
       {"shape.safetensors", "wrong shape",
        "model.diffusion_model.time_embed.0.weight -> time_embedding.linear_1.weight",
        "expected [128, 32], found [32, 128]"}});
  add({"missing_tensor",
       Model::tiny,
       [](const Ctx& x) {
         Tensors keep;
         for (auto& [k, t] : tiny_tensors())
           if (k != "model.diffusion_model.out.0.bias") keep.emplace_back(k, t);
         const std::string p = x.in + "/missing.safetensors";
         write_safetensors(p, keep);
         return x.tiny_file(p) + " -p x";
       },
       3,
       {"missing.safetensors", "1 missing", "conv_norm_out.bias"}});
  add({"diffusers_config_not_json",
       Model::none,
       [](const Ctx& x) {
         x.file("folder/model_index.json", "{}");
         x.file("folder/unet/config.json", "{\"in_channels\": 4,");
         return "--model " + q(x.in + "/folder") + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"unet/config.json", "invalid JSON"}});
  add({"diffusers_weights_missing",
       Model::tiny,
       [](const Ctx& x) {
         // The tiny folder with its text encoder weights left out.
         const std::string root = x.in + "/folder";
         fs::copy(test::tiny_model_dir(), root, fs::copy_options::recursive);
         fs::remove(root + "/text_encoder/model.safetensors");
         return "--model " + q(root) + " -o " + q(x.out + "/img.png") + " -p x";
       },
       3,
       {"text_encoder", "no weights found", "model.safetensors"}});

  // ---- flags: checked before the model loads (exit 2) --------------------
  auto flag = [&add](const std::string& name, const std::string& args,
                     std::vector<std::string> words) {
    add({name, Model::none,
         [args](const Ctx& x) {
           const bool own_output = args.rfind("-o ", 0) == 0;
           return (own_output ? "--model " + q(x.nomodel()) : x.base()) + " -p x " + args;
         },
         2, std::move(words)});
  };
  flag("width_not_multiple_of_8", "-W 63", {"--width 63", "multiple of 8"});
  flag("height_zero", "-H 0", {"--height 0", "positive multiple of 8"});
  flag("width_absurd", "-W 100000", {"--width 100000", "at most 8192"});
  flag("steps_zero", "--steps 0", {"--steps 0", "between 1 and 1000"});
  flag("steps_not_a_number", "--steps ten", {"--steps", "ten"});
  flag("negative_guidance", "--cfg-scale -1", {"--cfg-scale -1", "between 0 and 1000"});
  flag("strength_zero", "--strength 0", {"--strength 0", "(0, 1]"});
  flag("strength_above_one", "--strength 1.5", {"--strength 1.5", "(0, 1]"});
  flag("eta_above_one", "--eta 2", {"--eta 2", "between 0 and 1"});
  flag("unknown_sampler", "--sampler 'DPM adaptive'", {"--sampler", "DPM adaptive", "ddim"});
  flag("unknown_schedule", "--scheduler exponential", {"--scheduler exponential", "karras"});
  flag("unknown_prediction", "--prediction x0", {"--prediction x0", "epsilon or v"});
  flag("batch_size_zero", "--batch-size 0", {"--batch-size 0", "between 1 and 64"});
  flag("clip_skip_zero", "--clip-skip 0", {"--clip-skip 0", "between 1 and 1000"});
  flag("threads_zero", "--threads 0", {"--threads 0", "between 1 and 4096"});
  flag("threads_negative", "--threads -2", {"--threads -2", "between 1 and 4096"});
  flag("bad_shard", "--shard 2/2", {"--shard 2/2", "K must be less than N"});
  flag("fp16_on_cpu", "--device cpu --dtype fp16", {"--dtype fp16", "CPU"});
  flag("unknown_flag", "--colour red", {"--colour"});
  flag("bad_output_pattern", "-o '{nope}.png'", {"--output", "{nope}"});
  add({"no_prompt",
       Model::none,
       [](const Ctx& x) { return x.base(); },
       2,
       {"no prompt", "--prompt-file"}});

  // ---- the output (exit 2, before the model loads) -----------------------
  add({"output_is_a_directory",
       Model::none,
       [](const Ctx& x) {
         fs::create_directories(x.out + "/dir.png");
         return "--model " + q(x.nomodel()) + " -p x -o " + q(x.out + "/dir.png");
       },
       2,
       {"dir.png", "is a directory"}});
  add({"output_under_a_file",
       Model::none,
       [](const Ctx& x) {
         const std::string f = x.file("plain.txt", "a file, not a folder");
         return "--model " + q(x.nomodel()) + " -p x -o " + q(f + "/img.png");
       },
       2,
       {"plain.txt", "not a folder"}});
  add({"output_deep_under_a_file",
       Model::none,
       [](const Ctx& x) {
         const std::string f = x.file("plain.txt", "a file, not a folder");
         return "--model " + q(x.nomodel()) + " -p x -o " + q(f + "/sub/img.png");
       },
       2,
       {"plain.txt/sub", "cannot create output folder"}});
  add({"output_in_proc",
       Model::none,
       [](const Ctx& x) { return "--model " + q(x.nomodel()) + " -p x -o /proc/sdgen-test.png"; },
       2,
       {"/proc/sdgen-test.png", "not writable"}});

  // ---- init images (exit 2, before the model loads) ----------------------
  add({"init_image_missing",
       Model::none,
       [](const Ctx& x) { return x.base() + " -p x -i " + q(x.in + "/nope.png"); },
       2,
       {"nope.png", "cannot open image"}});
  add({"init_image_not_png",
       Model::none,
       [](const Ctx& x) {
         return x.base() + " -p x -i " + q(x.file("photo.jpg", "\xff\xd8\xff\xe0 JFIF"));
       },
       2,
       {"photo.jpg", "not a PNG file"}});
  add({"init_image_corrupt_png",
       Model::none,
       [](const Ctx& x) {
         return x.base() + " -p x -i " +
                q(x.file("broken.png", std::string("\x89PNG\r\n\x1a\n", 8) + "garbage"));
       },
       2,
       {"broken.png", "cannot decode PNG"}});
  add({"init_image_claims_huge_size",
       Model::none,
       [](const Ctx& x) {
         // An IHDR of 50000x50000 RGB and no pixel data (a decompression bomb's header).
         std::string png("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", 16);
         for (int i = 0; i < 2; ++i) png += std::string("\0\0\xc3\x50", 4);
         png += std::string("\x08\x02\0\0\0", 5) + "CRC!" + std::string("\0\0\0\0IEND", 8) + "CRC!";
         return x.base() + " -p x -i " + q(x.file("huge.png", png));
       },
       2,
       {"huge.png", "cannot decode PNG"}});
  add({"init_image_with_alpha",
       Model::none,
       [](const Ctx& x) { return x.base() + " -p x -i " + q(x.png("rgba.png", image(64, 64, 4))); },
       2,
       {"rgba.png", "alpha channel"}});
  add({"init_image_too_small",
       Model::none,
       [](const Ctx& x) { return x.base() + " -p x -i " + q(x.png("tiny.png", image(4, 4, 3))); },
       2,
       {"tiny.png", "smaller than 8x8"}});
  // A different size is not an error: the image is resized (README, -i) and
  // sdgen says so in one line.
  add({"init_image_other_size_is_resized",
       Model::tiny,
       [](const Ctx& x) {
         return x.tiny() + " -p x --steps 2 --strength 0.5 -W 64 -H 64 -i " +
                q(x.png("small.png", image(40, 48, 3)));
       },
       0,
       {"resizing the init image from 48x40 to 64x64"},
       false,
       false,
       {"img.png"}});

  // ---- inpainting masks (exit 2, before the model loads) -----------------
  add({"mask_missing",
       Model::none,
       [](const Ctx& x) {
         return x.base() + " -p x -i " + q(x.png("init.png", image(64, 64, 3))) + " --mask " +
                q(x.in + "/nope.png");
       },
       2,
       {"nope.png", "cannot open image"}});
  add({"mask_not_png",
       Model::none,
       [](const Ctx& x) {
         return x.base() + " -p x -i " + q(x.png("init.png", image(64, 64, 3))) + " --mask " +
                q(x.file("mask.jpg", "\xff\xd8\xff\xe0 JFIF"));
       },
       2,
       {"mask.jpg", "not a PNG file"}});
  add({"mask_all_black",
       Model::none,
       [](const Ctx& x) {
         return x.base() + " -p x -i " + q(x.png("init.png", image(64, 64, 3))) + " --mask " +
                q(x.png("black.png", torch::full({64, 64, 4}, 127, torch::kUInt8)));
       },
       2,
       {"black.png", "all black", "nothing to repaint"}});
  add({"mask_without_init_image",
       Model::none,
       [](const Ctx& x) {
         return x.base() + " -p x --mask " +
                q(x.png("mask.png", torch::full({64, 64, 1}, 255, torch::kUInt8)));
       },
       2,
       {"--mask", "mask.png", "needs --init-image"}});
  add({"paste_back_without_mask",
       Model::none,
       [](const Ctx& x) {
         return x.base() + " -p x --paste-back -i " + q(x.png("init.png", image(64, 64, 3)));
       },
       2,
       {"--paste-back needs --mask"}});
  add({"mask_blur_negative",
       Model::none,
       [](const Ctx& x) { return x.base() + " -p x --mask-blur -2"; },
       2,
       {"--mask-blur"}});

  // ---- PNG metadata ------------------------------------------------------
  add({"from_png_without_metadata",
       Model::none,
       [](const Ctx& x) {
         return x.base() + " --from-png " + q(x.png("plain.png", image(8, 8, 3)));
       },
       2,
       {"plain.png", "no A1111 'parameters'"}});
  add({"from_png_not_png",
       Model::none,
       [](const Ctx& x) { return x.base() + " --from-png " + q(x.file("notes.png", "hello")); },
       2,
       {"--from-png", "notes.png", "not a PNG file"}});
  add({"from_png_unknown_sampler",
       Model::none,
       [](const Ctx& x) {
         std::string params = kParams;
         params.replace(params.find("DDIM"), 4, "DPM adaptive");
         return x.base() + " --from-png " +
                q(x.png("adaptive.png", image(8, 8, 3), {{"parameters", params}}));
       },
       2,
       {"--sampler DPM adaptive", "adaptive.png", "unknown"}});
  add({"show_params_without_metadata",
       Model::none,
       [](const Ctx& x) { return "--show-params " + q(x.png("plain.png", image(8, 8, 3))); },
       2,
       {"plain.png", "no A1111 'parameters'"}});

  // ---- prompt files ------------------------------------------------------
  // A file whose every line is bad is reported without loading the model.
  auto lines = [&add](const std::string& name, const std::string& text,
                      std::vector<std::string> words) {
    add({name, Model::none,
         [text](const Ctx& x) { return x.base() + " --prompt-file " + q(x.file("p.txt", text)); },
         2, std::move(words), /*batch=*/true});
  };
  lines("prompt_file_invalid_json", "{\"prompt\": \"unterminated\n",
        {"p.txt line 1", "invalid JSON"});
  lines("prompt_file_unknown_key", "{\"prompt\": \"x\", \"colour\": \"red\"}\n",
        {"p.txt line 1", "unknown key \"colour\""});
  lines("prompt_file_wrong_type", "{\"prompt\": \"x\", \"steps\": \"ten\"}\n",
        {"p.txt line 1", "\"steps\" must be a whole number"});
  lines("prompt_file_prompt_not_string", "{\"prompt\": 5}\n",
        {"p.txt line 1", "\"prompt\" must be a string"});
  // Blank lines and comments are skipped but keep their line numbers.
  lines("prompt_file_blank_lines_skipped",
        "\n   \n# a comment\n{\"prompt\": \"x\", \"width\": 60}\n",
        {"p.txt line 4", "\"width\" 60: must be a positive multiple of 8"});
  lines("prompt_file_10mb_line", std::string(10 << 20, 'a') + "\n",
        {"p.txt line 1", "10485760 bytes", "longer than"});
  add({"prompt_file_only_blank_lines",
       Model::none,
       [](const Ctx& x) {
         return x.base() + " --prompt-file " + q(x.file("p.txt", "\n# nothing here\n  \n"));
       },
       2,
       {"p.txt", "no prompts"}});
  add({"prompt_file_missing",
       Model::none,
       [](const Ctx& x) { return x.base() + " --prompt-file " + q(x.in + "/none.txt"); },
       2,
       {"none.txt", "cannot read the prompt file"}});
  add({"prompt_file_is_a_folder",
       Model::none,
       [](const Ctx& x) {
         fs::create_directories(x.in + "/prompts");
         return x.base() + " --prompt-file " + q(x.in + "/prompts");
       },
       2,
       {"prompts", "is a folder"}});
  // Found only once the model is there: the line's init image does not exist.
  add({"prompt_file_missing_init_image",
       Model::tiny,
       [](const Ctx& x) {
         return x.tiny() + " --steps 1 --prompt-file " +
                q(x.file("p.txt",
                         "{\"prompt\": \"x\", \"init_image\": \"" + x.in + "/gone.png\"}\n"));
       },
       2,
       {"p.txt line 1", "gone.png", "cannot open image"},
       true});
  // ---- sdgen convert (issue 30) -------------------------------------------
  // Malicious checkpoints: a __reduce__ payload that would create out/pwned
  // when unpickled; each is refused naming its global, and the "nothing left
  // behind" check below proves the payload never ran.
  auto evil = [&add](const std::string& module, const std::string& name) {
    const std::string full = (module == "__builtin__" ? "builtins" : module) + "." + name;
    std::string tag = full;
    for (auto& ch : tag)
      if (ch == '.') ch = '_';
    add({"convert_refuses_" + tag,
         Model::none,
         [module, name](const Ctx& x) {
           fs::create_directories(x.out);  // so that the payload could write there
           const std::string pkl =
               test::malicious_pickle(module, name, "touch " + x.out + "/pwned");
           return "convert " + q(x.file("evil.ckpt", test::torch_checkpoint(pkl, {}))) + " -o " +
                  q(x.out + "/evil.safetensors");
         },
         2,
         {"evil.ckpt", "refused pickle global '" + full + "'", "nothing was executed"}});
  };
  evil("posix", "system");
  evil("os", "system");
  evil("builtins", "eval");
  evil("__builtin__", "exec");
  evil("subprocess", "Popen");
  evil("builtins", "getattr");
  evil("torch", "load");
  // Broken and hostile archives and pickles.
  auto convert = [&add](const std::string& name, std::function<std::string()> bytes,
                        std::vector<std::string> words) {
    add({"convert_" + name, Model::none,
         [bytes](const Ctx& x) {
           return "convert " + q(x.file("in.ckpt", bytes())) + " -o " +
                  q(x.out + "/in.safetensors");
         },
         2, std::move(words)});
  };
  const auto one_tensor = [](int64_t storage_numel, int64_t offset, std::vector<int64_t> size) {
    test::PickleWriter w;
    w.op('}').str("w").tensor("FloatStorage", "0", storage_numel, offset, size, {1}).op('s');
    return w.bytes();
  };
  const std::string floats(48, '\0');  // 12 fp32 zeros
  convert("truncated",
          [=] {
            const std::string ok = test::torch_checkpoint(one_tensor(12, 0, {12}), {{"0", floats}});
            return ok.substr(0, ok.size() / 2);
          },
          {"in.ckpt", "not a ZIP archive, or truncated"});
  convert("not_a_zip", [] { return std::string("just some text, not a checkpoint"); },
          {"in.ckpt", "not a ZIP archive"});
  convert("storage_too_small",
          [=] {
            return test::torch_checkpoint(one_tensor(12, 0, {12}), {{"0", floats.substr(0, 20)}});
          },
          {"in.ckpt", "'archive/data/0' holds 20 bytes"});
  convert("offset_past_end",
          [=] {
            return test::torch_checkpoint(one_tensor(12, 40, {1}), {{"0", floats}});
          },
          {"in.ckpt", "storage offset 40 is past the end"});
  convert("compressed_entry",
          [=] {
            test::ZipOptions z;
            z.compressed = "archive/data/0";
            return test::torch_checkpoint(one_tensor(12, 0, {12}), {{"0", floats}}, z);
          },
          {"in.ckpt", "'archive/data/0' is compressed"});
  convert(
      "nested_100000_levels",
      [] {
        test::PickleWriter w;
        w.op('}').str("deep").raw(std::string(100000, ']')).raw(std::string(99999, 'a')).op('s');
        return test::torch_checkpoint(w.bytes(), {});
      },
      {"in.ckpt", "nested deeper than"});
  convert("huge_memo_index",
          [] { return test::torch_checkpoint(test::PickleWriter().get(0xffffffffu).bytes(), {}); },
          {"in.ckpt", "memo index 4294967295 was never stored"});
  add({"convert_output_exists",
       Model::none,
       [](const Ctx& x) {
         const std::string in =
             x.file("in.ckpt", test::torch_checkpoint(test::PickleWriter().op('}').bytes(), {}));
         return "convert " + q(in) + " -o " + q(x.file("taken.safetensors", "keep me"));
       },
       2,
       {"taken.safetensors", "already exists", "--force"}});
  add({"convert_bad_dtype",
       Model::none,
       [](const Ctx& x) { return "convert " + q(x.in + "/none.ckpt") + " --dtype fp8"; },
       2,
       {"--dtype", "fp8"}});
  add({"convert_missing_input",
       Model::none,
       [](const Ctx& x) {
         return "convert " + q(x.in + "/none.ckpt") + " -o " + q(x.out + "/none.safetensors");
       },
       2,
       {"none.ckpt", "file not found"}});
  return c;
}

class BadInput : public ::testing::TestWithParam<BadCase> {};

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// Every file under `dir`, relative to it.
std::set<std::string> files_under(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec))
    if (!it->is_directory()) out.insert(fs::relative(it->path(), dir).string());
  return out;
}

// One case's run: its folder, the files it made, the command and what came out.
struct Outcome {
  bool ran = false;
  std::string skip;  // why the case was not run
  Ctx ctx;
  std::set<std::string> before;
  std::string cmd, stderr_path, stderr_text;
  int status = -1;
  double took = 0;
};

// The selected cases (--gtest_filter), each set up in turn and then run
// several at a time: a run is mostly libtorch's start-up (~1 s of CPU), and
// the table must stay well under a minute.
Outcome prepare(const BadCase& c) {
  Outcome o;
  if (c.model == Model::tiny && !test::has_shared()) {
    o.skip = "reference data not found at " + test::shared_dir();
    return o;
  }
  Ctx& x = o.ctx;
  x.dir = test::temp_dir("bad-" + c.name);
  x.in = x.dir + "/in";
  x.out = x.dir + "/out";
  fs::create_directories(x.in);
  const std::string args = c.setup(x);
  std::string prefix;
  if (c.as_nobody && ::geteuid() == 0) {
    // root reads any file whatever its mode: run this case as "nobody".
    prefix = "setpriv --reuid=65534 --regid=65534 --clear-groups ";
    if (std::system(
            (prefix + "test -x " + q(test::binary_dir() + "/sdgen") + " 2>/dev/null").c_str()) !=
        0) {
      o.skip = "running as root and user nobody cannot run sdgen (setpriv)";
      return o;
    }
    fs::permissions(x.dir, fs::perms::all);
    fs::permissions(x.in, fs::perms::all);
  }
  o.before = files_under(x.dir);
  static const std::string cache = test::temp_dir("bad-cache"), logs = test::temp_dir("bad-logs");
  const std::string err = logs + "/" + c.name + ".stderr", out = logs + "/" + c.name + ".stdout";
  o.stderr_path = err;
  // Prompt-file runs (and the successful case) are not quiet, so that their
  // summary line is checked too.
  // A subcommand (sdgen convert) comes first and takes its own flags.
  const bool subcommand = args.rfind("convert ", 0) == 0;
  o.cmd = "cd " + q(x.dir) + " && XDG_CACHE_HOME=" + q(cache) + " timeout 120 " + prefix +
          test::binary_dir() + "/sdgen " +
          (subcommand ? args + (c.code == 0 ? "" : " -q")
                      : "--threads 1 --seed 1 " + std::string(c.batch || c.code == 0 ? "" : "-q ") +
                            args) +
          " >" + q(out) + " 2>" + q(err) + " </dev/null";
  o.ran = true;
  return o;
}

const std::map<std::string, Outcome>& outcomes() {
  static std::map<std::string, Outcome> all = [] {
    std::set<std::string> selected;
    const auto* unit = ::testing::UnitTest::GetInstance();
    for (int i = 0; i < unit->total_test_suite_count(); ++i) {
      const auto* suite = unit->GetTestSuite(i);
      if (std::string(suite->name()) != "Table/BadInput") continue;
      for (int j = 0; j < suite->total_test_count(); ++j) {
        const auto* info = suite->GetTestInfo(j);
        const std::string name = info->name();
        if (info->should_run()) selected.insert(name.substr(name.find('/') + 1));
      }
    }
    std::map<std::string, Outcome> out;
    std::vector<Outcome*> todo;
    for (const auto& c : cases())
      if (selected.count(c.name)) {
        Outcome& o = out[c.name] = prepare(c);
        if (o.ran) todo.push_back(&o);
      }
    std::atomic<size_t> next{0};
    auto worker = [&] {
      for (size_t i; (i = next++) < todo.size();) {
        Outcome& o = *todo[i];
        const auto t0 = std::chrono::steady_clock::now();
        o.status = std::system(o.cmd.c_str());
        o.took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        o.stderr_text = read_file(o.stderr_path);
      }
    };
    const unsigned n = std::clamp(std::thread::hardware_concurrency() + 1, 2u, 8u);
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < n; ++i) threads.emplace_back(worker);
    for (auto& t : threads) t.join();
    return out;
  }();
  return all;
}

TEST_P(BadInput, FailsCleanly) {
  const BadCase& c = GetParam();
  const Outcome& o = outcomes().at(c.name);
  if (!o.ran) GTEST_SKIP() << o.skip;
  const Ctx& x = o.ctx;
  const std::string log = "\n$ " + o.cmd + "\nstderr:\n" + o.stderr_text;
  ASSERT_TRUE(WIFEXITED(o.status)) << "killed by a signal" << log;
  const int code = WEXITSTATUS(o.status);
  EXPECT_NE(code, 124) << "timed out (hang)" << log;
  EXPECT_EQ(code, c.code) << log;
  for (const char* crash : {"terminate called", "Exception raised from", "frame #", "Aborted",
                            "Segmentation fault", "what():", "AddressSanitizer", "runtime error:"})
    EXPECT_EQ(o.stderr_text.find(crash), std::string::npos) << crash << log;

  std::vector<std::string> errors, others;
  for (const auto& line : split_lines(o.stderr_text)) {
    if (line.rfind("sdgen: loaded ", 0) == 0) continue;  // the model load, when not quiet
    (line.rfind("sdgen: error: ", 0) == 0 ? errors : others).push_back(line);
  }
  if (c.code == 0) {
    EXPECT_TRUE(errors.empty()) << log;
    for (const auto& w : c.words)
      EXPECT_NE(o.stderr_text.find(w), std::string::npos) << "missing words: " << w << log;
  } else {
    ASSERT_EQ(errors.size(), 1u) << "expected exactly one error line" << log;
    for (const auto& w : c.words)
      EXPECT_NE(errors[0].find(w), std::string::npos) << "missing words: " << w << log;
    if (c.batch) {
      // The documented summary, and nothing else.
      ASSERT_EQ(others.size(), 1u) << log;
      EXPECT_EQ(others[0].rfind("sdgen: done in ", 0), 0u) << log;
      EXPECT_NE(others[0].find("0 written, 0 skipped (already there), 0 failed, 1 bad line"),
                std::string::npos)
          << log;
    } else {
      EXPECT_TRUE(others.empty()) << "unexpected stderr lines" << log;
    }
  }

  // Nothing left behind: no output, no temporary file, anywhere in the case's folder.
  std::set<std::string> expected = o.before;
  for (const auto& out : c.outputs) expected.insert("out/" + out);
  const std::set<std::string> after = files_under(x.dir);
  for (const auto& f : after) EXPECT_TRUE(expected.count(f)) << "left behind: " << f << log;
  for (const auto& out : c.outputs)
    EXPECT_TRUE(after.count("out/" + out)) << "not written: " << out;
  std::cout << "[bad input] " << c.name << ": exit " << code << " in " << o.took
            << " s: " << (errors.empty() ? (others.empty() ? "" : others.back()) : errors[0])
            << std::endl;
}

INSTANTIATE_TEST_SUITE_P(Table, BadInput, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<BadCase>& info) {
                           return info.param.name;
                         });

TEST(BadInputTable, HasAtLeast30Cases) { EXPECT_GE(cases().size(), 30u); }

}  // namespace
}  // namespace sdgen
