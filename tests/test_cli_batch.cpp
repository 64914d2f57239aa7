// End to end through the `sdgen` binary on the tiny model: prompt files with
// --shard, bad lines, --skip-existing after a killed run, --from-png
// reproducing an image byte for byte, --json parsed back, --info, exit codes,
// --max-batch (mixed-prompt batches) against one entry at a time.
// Images are 64x64 with 2-4 steps, so each run takes about a second.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli/background_writer.h"
#include "cli/resources.h"
#include "cli/session.h"
#include "sdgen/image_io.h"
#include "sdgen/memory_estimate.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

std::string q(const std::string& s) { return "'" + s + "'"; }

// sdgen with the tiny model and a private hash cache.
std::string sdgen_cmd(const std::string& dir) {
  return "XDG_CACHE_HOME=" + q(dir + "/cache") + " " + test::binary_dir() + "/sdgen --model " +
         q(test::tiny_model_dir()) + " --threads 1 -W 64 -H 64 ";
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::set<std::string> pngs(const std::string& dir) {
  std::set<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".png") out.insert(e.path().filename().string());
  return out;
}

const char* kFivePrompts =
    "# five entries, one comment and a blank line\n"
    "a red fox\n"
    "\n"
    "{\"prompt\": \"a blue cat\", \"seed\": 7, \"steps\": 3}\n"
    "a (green:1.2) tree\n"
    "{\"prompt\": \"two birds\", \"batch_size\": 2}\n"
    "a house, [small]\n";

TEST(CLIBatch, ShardsPartitionThePromptFileIntoOneFolder) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("shard");
  write_file(dir + "/prompts.txt", kFivePrompts);
  const std::string common =
      sdgen_cmd(dir) + "--steps 2 --seed 100 -q --prompt-file " + q(dir + "/prompts.txt") + " -o ";
  std::string log;
  // The whole file in one run, then as 3 shards into another folder.
  ASSERT_EQ(test::run(common + q(dir + "/all/{index}-{seed}-{prompt}.png"), &log), 0) << log;
  for (int k = 0; k < 3; ++k)
    ASSERT_EQ(test::run(common + q(dir + "/sharded/{index}-{seed}-{prompt}.png") + " --shard " +
                            std::to_string(k) + "/3",
                        &log),
              0)
        << log;
  const std::set<std::string> expected = {"0-100-a-red-fox.png",        "1-7-a-blue-cat.png",
                                          "2-100-a-green-1-2-tree.png", "3-100-two-birds.png",
                                          "4-100-two-birds.png",        "5-100-a-house-small.png"};
  EXPECT_EQ(pngs(dir + "/all"), expected);
  EXPECT_EQ(pngs(dir + "/sharded"), expected);
  for (const auto& name : expected)
    EXPECT_EQ(read_file(dir + "/all/" + name), read_file(dir + "/sharded/" + name)) << name;
  // Shard 1/3 holds entries 1 and 4 only.
  const auto one = test::temp_dir("shard1");
  ASSERT_EQ(test::run(common + q(one + "/%02d.png") + " --shard 1/3", &log), 0) << log;
  EXPECT_EQ(pngs(one), std::set<std::string>({"01.png", "05.png"}));
}

TEST(CLIBatch, BadLinesAreReportedSkippedAndFailTheRun) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("badlines");
  write_file(dir + "/p.txt",
             "first\n"
             "{\"prompt\": \"unterminated\n"
             "second\n"
             "{\"prompt\": \"x\", \"colour\": \"red\"}\n"
             "{\"prompt\": \"y\", \"width\": 60}\n"
             "{\"prompt\": \"z\", \"sampler\": \"nope\"}\n"
             "third\n");
  std::string log;
  const std::string cmd = sdgen_cmd(dir) + "--steps 2 --seed 1 --prompt-file " + q(dir + "/p.txt");
  EXPECT_EQ(test::run(cmd + " -o " + q(dir + "/out/%d.png"), &log), 2);
  for (const char* words : {"p.txt line 2: invalid JSON", "p.txt line 4: unknown key \"colour\"",
                            "p.txt line 5: \"width\" 60: must be a positive multiple of 8",
                            "p.txt line 6: \"sampler\" \"nope\": unknown sampler",
                            "0 skipped (already there), 0 failed, 4 bad lines"})
    EXPECT_NE(log.find(words), std::string::npos) << words << "\n" << log;
  // Bad lines keep their index: the good ones are 0, 2 and 6.
  EXPECT_EQ(pngs(dir + "/out"), std::set<std::string>({"0.png", "2.png", "6.png"}));
  // --fail-fast stops at line 2.
  EXPECT_EQ(test::run(cmd + " --fail-fast -o " + q(dir + "/ff/%d.png"), &log), 2);
  EXPECT_EQ(pngs(dir + "/ff"), std::set<std::string>({"0.png"})) << log;
  EXPECT_NE(log.find("--fail-fast"), std::string::npos) << log;
}

TEST(CLIBatch, SkipExistingResumesAKilledRun) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("resume");
  std::string prompts;
  for (int i = 0; i < 6; ++i) prompts += "prompt number " + std::to_string(i) + "\n";
  write_file(dir + "/p.txt", prompts);
  const std::string cmd = sdgen_cmd(dir) + "--steps 4 --seed 5 -q --prompt-file " +
                          q(dir + "/p.txt") + " -o " + q(dir + "/run/img-{index}.png");
  // Kill -9 once the first image is there.
  std::string log;
  test::run("(" + cmd + " >/dev/null 2>&1 & pid=$!; i=0; while [ ! -e " +
                q(dir + "/run/img-0.png") +
                " ] && [ $i -lt 600 ]; do sleep 0.02; i=$((i+1)); done; kill -9 $pid; wait $pid)",
            &log);
  const auto before = pngs(dir + "/run");
  ASSERT_GE(before.size(), 1u);
  std::cout << "[resume] " << before.size() << " of 6 images before the kill" << std::endl;
  std::map<std::string, std::string> kept;
  for (const auto& n : before) kept[n] = read_file(dir + "/run/" + n);
  ASSERT_EQ(test::run(cmd + " --skip-existing", &log), 0) << log;
  EXPECT_EQ(pngs(dir + "/run").size(), 6u);
  // Files from before the kill were not rewritten; a fresh run gives the same bytes.
  for (const auto& [n, bytes] : kept) EXPECT_EQ(read_file(dir + "/run/" + n), bytes) << n;
  ASSERT_EQ(test::run(sdgen_cmd(dir) + "--steps 4 --seed 5 -q --prompt-file " + q(dir + "/p.txt") +
                          " -o " + q(dir + "/fresh/img-{index}.png"),
                      &log),
            0)
      << log;
  for (int i = 0; i < 6; ++i) {
    const std::string n = "img-" + std::to_string(i) + ".png";
    EXPECT_EQ(read_file(dir + "/run/" + n), read_file(dir + "/fresh/" + n)) << n;
  }
  // Nothing left to do: all skipped, summary says so.
  ASSERT_EQ(test::run(sdgen_cmd(dir) + "--steps 4 --seed 5 --prompt-file " + q(dir + "/p.txt") +
                          " -o " + q(dir + "/run/img-{index}.png") + " --skip-existing",
                      &log),
            0);
  EXPECT_NE(log.find("0 written, 6 skipped"), std::string::npos) << log;
}

TEST(CLIBatch, FromPngReproducesTheImageByteForByte) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("frompng");
  std::string log;
  ASSERT_EQ(test::run(sdgen_cmd(dir) +
                          "-p 'a (red:1.3) fox, [snow]' -n 'blurry, text: \"watermark\"' "
                          "--sampler 'DPM++ 2M' --scheduler karras --steps 3 --cfg-scale 6.5 "
                          "--clip-skip 2 --seed 1234 -b 2 -q -o " +
                          q(dir + "/a.png"),
                      &log),
            0)
      << log;
  ASSERT_TRUE(fs::exists(dir + "/a-1.png")) << log;
  ASSERT_EQ(test::run(test::binary_dir() + "/sdgen --show-params " + q(dir + "/a-1.png"), &log), 0);
  EXPECT_NE(log.find("a (red:1.3) fox, [snow]\nNegative prompt: blurry, text: \"watermark\"\n"
                     "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, "
                     "Seed: 1234, Size: 64x64, Model hash: "),
            std::string::npos)
      << log;
  EXPECT_NE(
      log.find(", Model: sd1-tiny, Clip skip: 2, Batch size: 2, Batch pos: 1, Version: sdgen "),
      std::string::npos)
      << log;
  // Image 1 of the batch, from its PNG alone.
  ASSERT_EQ(test::run(sdgen_cmd(dir) + "--from-png " + q(dir + "/a-1.png") + " -q -o " +
                          q(dir + "/b.png"),
                      &log),
            0)
      << log;
  EXPECT_EQ(pngs(dir), std::set<std::string>({"a-0.png", "a-1.png", "b.png"}));
  EXPECT_EQ(read_file(dir + "/b.png"), read_file(dir + "/a-1.png"));
  // Other flags override the PNG's settings.
  ASSERT_EQ(test::run(sdgen_cmd(dir) + "--from-png " + q(dir + "/a-1.png") + " --seed 99 -q -o " +
                          q(dir + "/c.png") + " && " + test::binary_dir() +
                          "/sdgen --show-params " + q(dir + "/c.png") + " --json",
                      &log),
            0)
      << log;
  const auto j = nlohmann::json::parse(log.substr(log.find('{')));
  EXPECT_EQ(j["fields"]["Seed"], "99");
  EXPECT_EQ(j["fields"]["Steps"], "3");
  EXPECT_EQ(j["negative_prompt"], "blurry, text: \"watermark\"");
}

TEST(CLIBatch, JsonLinesBatchCountSeedsAndStdin) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("json");
  std::string log;
  // Two lines from standard input, each twice (--batch-count): seeds 10, 11.
  ASSERT_EQ(
      test::run("printf 'a cat\\n{\"prompt\": \"a dog\", \"steps\": 3}\\n' | " + sdgen_cmd(dir) +
                    "--steps 2 --seed 10 --batch-count 2 --json -q "
                    "--prompt-file - -o " +
                    q(dir + "/{line}-{seed}.png") + " 2>/dev/null",
                &log),
      0)
      << log;
  std::vector<nlohmann::json> images;
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) images.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(images.size(), 4u) << log;
  const std::vector<std::pair<int, uint64_t>> expected = {{1, 10}, {1, 11}, {2, 10}, {2, 11}};
  for (size_t i = 0; i < 4; ++i) {
    const auto& j = images[i];
    EXPECT_EQ(j["index"], i);
    EXPECT_EQ(j["line"], expected[i].first);
    EXPECT_EQ(j["seed"], expected[i].second);
    EXPECT_EQ(j["steps"], i < 2 ? 2 : 3);
    EXPECT_EQ(j["width"], 64);
    EXPECT_EQ(j["sampler"], "ddim");
    EXPECT_EQ(j["model_hash"].get<std::string>().size(), 10u);
    EXPECT_TRUE(fs::exists(j["path"].get<std::string>())) << j.dump();
    for (const char* t : {"load_s", "text_s", "sampling_s", "decode_s", "total_s", "it_per_s"})
      EXPECT_TRUE(j["timings"][t].is_number()) << t;
    EXPECT_GT(j["timings"]["total_s"].get<double>(), 0);
  }
  EXPECT_EQ(images[1]["path"], dir + "/1-11.png");
  // --batch-count image 2 is the image of seed 11 on its own.
  ASSERT_EQ(
      test::run(sdgen_cmd(dir) + "-p 'a cat' --steps 2 --seed 11 -q -o " + q(dir + "/x.png"), &log),
      0);
  EXPECT_TRUE(torch::equal(read_png(dir + "/x.png").pixels, read_png(dir + "/1-11.png").pixels));
}

TEST(CLIBatch, InfoAndExitCodes) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("info");
  std::string log;
  ASSERT_EQ(test::run(sdgen_cmd(dir) + "--info --json 2>/dev/null", &log), 0) << log;
  const auto j = nlohmann::json::parse(log);
  EXPECT_EQ(j["family"], "SD1.x");
  EXPECT_EQ(j["layout"], "diffusers");
  EXPECT_EQ(j["prediction_type"], "epsilon");
  EXPECT_GT(j["parameters"]["unet"].get<int64_t>(), 0);
  EXPECT_EQ(j["parameters"]["total"].get<int64_t>(),
            j["parameters"]["unet"].get<int64_t>() + j["parameters"]["vae"].get<int64_t>() +
                j["parameters"]["text_encoder"].get<int64_t>());
  EXPECT_EQ(j["stored_dtypes"]["unet"]["F32"].is_number(), true);
  EXPECT_NE(j["tokenizer"].get<std::string>().find("tokenizer"), std::string::npos);
  ASSERT_EQ(test::run(sdgen_cmd(dir) + "--info 2>/dev/null", &log), 0);
  EXPECT_NE(log.find("family:      SD1.x"), std::string::npos) << log;

  // Exit codes: 2 usage, 3 model, 1 generation/output.
  EXPECT_EQ(test::run(sdgen_cmd(dir) + "-p x --no-such-flag", &log), 2) << log;
  EXPECT_EQ(test::run(sdgen_cmd(dir) + "-p x --shard 3/3", &log), 2) << log;
  EXPECT_EQ(test::run(sdgen_cmd(dir) + "--prompt-file " + q(dir + "/missing.txt"), &log), 2);
  EXPECT_EQ(test::run(sdgen_cmd(dir) + "-p x --from-png " + q(dir + "/missing.png"), &log), 2);
  EXPECT_EQ(test::run(test::binary_dir() + "/sdgen --model " + q(dir + "/nope") + " -p x -q", &log),
            3)
      << log;
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
  EXPECT_EQ(log.rfind("sdgen: error: ", 0), 0u) << log;
}

// --max-batch: a prompt file run in mixed-prompt batches writes the same PNG
// bytes, --json lines (but their timings), errors and exit code as one entry
// at a time, also with a bad line in the middle, --skip-existing, --shard and
// --batch-count.

std::map<std::string, std::string> png_bytes(const std::string& dir) {
  std::map<std::string, std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".png") out[e.path().filename().string()] = read_file(e.path());
  return out;
}

// The --json lines of `output` with the timings dropped and `dir` cut from
// the paths; other lines (none with -q but errors on stderr) kept as they are.
std::vector<std::string> json_lines(const std::string& output, const std::string& dir) {
  std::vector<std::string> out;
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] != '{') {
      if (line.rfind("sdgen: done", 0) != 0) out.push_back(line);  // its time differs
      continue;
    }
    auto j = nlohmann::json::parse(line);
    j.erase("timings");
    std::string path = j["path"];
    if (path.rfind(dir, 0) == 0) j["path"] = path.substr(dir.size());
    out.push_back(j.dump());
  }
  return out;
}

// Mixed entries: batchable runs of plain lines, prompts of other lengths and
// weights, negative prompts, other seeds and batch sizes, entries that split a
// batch (steps, size, sampler, a two-chunk prompt), and a bad line.
std::string mixed_prompts() {
  std::string long_words;  // two 75-token chunks
  for (int i = 0; i < 40; ++i) long_words += "blue house, ";
  return "a red fox\n"
         "{\"prompt\": \"a (blue:1.3) cat\", \"negative_prompt\": \"blurry\", \"seed\": 7}\n"
         "a green tree, [small], oil painting, detailed\n"
         "{\"prompt\": \"two birds\", \"batch_size\": 2, \"clip_skip\": 2}\n"
         "{\"prompt\": \"a house\", \"steps\": 3}\n"
         "{\"prompt\": \"a boat\", \"steps\": 3, \"seed\": 9}\n"
         "{\"prompt\": \"broken\", \"width\": 60}\n"
         "a mountain lake\n"
         "{\"prompt\": \"a wide sky\", \"width\": 96}\n"
         "{\"prompt\": \"a desert road\", \"sampler\": \"euler_a\", \"seed\": 11}\n"
         "{\"prompt\": \"a forest road\", \"sampler\": \"euler_a\", \"seed\": 12}\n"
         "{\"prompt\": \"" +
         long_words + "\"}\n{\"prompt\": \"" + long_words +
         " again\", \"seed\": 3}\n"
         "the last line\n";
}

struct SdgenRun {
  int code = 0;
  std::string output;
};

SdgenRun run_sdgen(const std::string& dir, const std::string& args) {
  SdgenRun r;
  r.code = test::run(sdgen_cmd(dir) + args, &r.output);
  return r;
}

TEST(CLIMaxBatch, MixedBatchesWriteWhatOneAtATimeWrites) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("maxbatch");
  write_file(dir + "/p.txt", mixed_prompts());
  const std::string common = "--steps 2 --seed 100 -q --json --prompt-file " + q(dir + "/p.txt");
  const auto one = run_sdgen(dir, common + " --max-batch 1 -o " + q(dir + "/one/{index}.png"));
  const auto four = run_sdgen(dir, common + " --max-batch 4 -o " + q(dir + "/four/{index}.png"));
  // The bad line (7, index 7) fails the run, the rest is written.
  EXPECT_EQ(one.code, 2) << one.output;
  EXPECT_EQ(four.code, one.code) << four.output;
  EXPECT_NE(one.output.find("p.txt line 7: \"width\" 60"), std::string::npos) << one.output;
  const auto a = png_bytes(dir + "/one"), b = png_bytes(dir + "/four");
  EXPECT_EQ(a.size(), 14u);  // 15 images, the bad line's one missing
  EXPECT_EQ(a.count("7.png"), 0u);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, bytes] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(bytes == b.at(name)) << name << " differs with --max-batch 4";
  }
  EXPECT_EQ(json_lines(four.output, dir + "/four/"), json_lines(one.output, dir + "/one/"));

  // Resume: --skip-existing with two images gone regenerates just those,
  // byte for byte, and prints their lines only.
  fs::remove(dir + "/four/1.png");
  fs::remove(dir + "/four/9.png");
  const auto resumed =
      run_sdgen(dir, common + " --max-batch 4 --skip-existing -o " + q(dir + "/four/{index}.png"));
  EXPECT_EQ(resumed.code, 2) << resumed.output;
  EXPECT_EQ(png_bytes(dir + "/four"), a);
  const auto lines = json_lines(resumed.output, dir + "/four/");
  const auto json_count =
      std::count_if(lines.begin(), lines.end(), [](const std::string& l) { return l[0] == '{'; });
  EXPECT_EQ(json_count, 2) << resumed.output;

  // A shard of the file with --batch-count 2: each entry's seeds join batches too.
  const std::string shard = common + " --shard 1/2 --batch-count 2";
  const auto s1 = run_sdgen(dir, shard + " --max-batch 1 -o " + q(dir + "/s1/{index}.png"));
  const auto s8 = run_sdgen(dir, shard + " --max-batch 8 -o " + q(dir + "/s8/{index}.png"));
  EXPECT_EQ(s8.code, s1.code) << s8.output;
  EXPECT_FALSE(png_bytes(dir + "/s1").empty());
  EXPECT_EQ(png_bytes(dir + "/s8"), png_bytes(dir + "/s1"));
  EXPECT_EQ(json_lines(s8.output, dir + "/s8/"), json_lines(s1.output, dir + "/s1/"));
}

// The memory check of a mixed batch counts all its images: under a limit
// between one image's estimate and four images', one job fits and four
// together do not (the runner then starts a new batch instead).
TEST(CLIMaxBatch, MemoryEstimateCountsTheWholeBatch) {
  SDGEN_REQUIRE_SHARED();
  cli::ModelSession session;
  Settings run;
  run.model = test::tiny_model_dir();
  run.quiet = true;
  cli::load_session(session, run, nullptr);
  cli::Job job;
  job.request.width = job.request.height = 512;
  job.request.prompt = "a red fox";
  MemorySettings settings;
  settings.dtype = session.model->dtype;
  settings.vae_dtype = session.model->vae_dtype;
  const auto footprint = model_footprint(*session.model);
  MemoryRequest request = cli::memory_request(job.request);
  const int64_t one = estimate_memory(footprint, settings, request).total;
  request.batch_size = 4;
  const int64_t four = estimate_memory(footprint, settings, request).total;
  ASSERT_GT(four, one);
  const std::string limit = std::to_string((one + four) / 2 / kMiB);
  ASSERT_EQ(setenv("SDGEN_MEMORY_LIMIT_MB", limit.c_str(), 1), 0);
  const std::vector<const cli::Job*> alone{&job}, batch(4, &job);
  EXPECT_EQ(cli::jobs_memory_problem(session, alone), "");
  EXPECT_EQ(cli::job_memory_problem(session, job), "");
  const std::string problem = cli::jobs_memory_problem(session, batch);
  unsetenv("SDGEN_MEMORY_LIMIT_MB");
  EXPECT_NE(problem.find("batch 4"), std::string::npos) << problem;
}

TEST(CLIMaxBatch, RejectsABadMaxBatch) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("maxbatch-bad");
  write_file(dir + "/p.txt", "a\n");
  const auto r = run_sdgen(
      dir, "--max-batch 0 -q --prompt-file " + q(dir + "/p.txt") + " -o " + q(dir + "/x.png"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--max-batch"), std::string::npos) << r.output;
}

// The writer thread (PNG encoding and writing beside the next batch's
// sampling): tasks run in the order given, submit waits while the queue is
// full, and every task given runs before the writer goes away.
TEST(BackgroundWriter, RunsInOrderBoundedAndFinishesItsQueue) {
  std::vector<int> done;
  {
    cli::BackgroundWriter writer(4);
    for (int i = 0; i < 100; ++i) writer.submit([&done, i] { done.push_back(i); });
    writer.wait_idle();
    ASSERT_EQ(done.size(), 100u);
    for (int i = 0; i < 100; ++i) EXPECT_EQ(done[i], i);
    // One task holds the thread and two wait (capacity 2): the next submit blocks.
    cli::BackgroundWriter small(2);
    std::atomic<bool> release{false}, started{false}, third_queued{false};
    std::atomic<int> ran{0};
    small.submit([&] {
      started = true;
      while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ++ran;
    });
    while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    small.submit([&] { ++ran; });
    small.submit([&] { ++ran; });
    std::thread giver([&] {
      small.submit([&] { ++ran; });
      third_queued = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_FALSE(third_queued) << "submit did not wait for room in a full queue";
    release = true;
    giver.join();
    EXPECT_TRUE(third_queued);
    small.wait_idle();
    EXPECT_EQ(ran, 4);
    for (int i = 100; i < 110; ++i) writer.submit([&done, i] { done.push_back(i); });
  }  // the destructors run what is queued
  EXPECT_EQ(done.size(), 110u);
}

// An image that cannot be written (a folder has its name) is reported with its
// line after the images before it, the others are still written and listed
// in file order, and the run fails; --fail-fast stops there. The same with
// mixed-prompt batches.
TEST(CLIBatch, AnImageThatCannotBeWrittenIsReportedInFileOrder) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("unwritable");
  write_file(dir + "/p.txt", "first\nsecond\nthird\nfourth\n");
  const auto files = [](const std::string& d) {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(d))
      if (e.is_regular_file()) out.insert(e.path().filename().string());
    return out;
  };
  for (const char* max_batch : {"1", "4"}) {
    SCOPED_TRACE(std::string("--max-batch ") + max_batch);
    const std::string out = dir + "/out" + max_batch, ff = dir + "/ff" + max_batch;
    fs::create_directories(out + "/1.png");
    fs::create_directories(ff + "/1.png");
    const std::string cmd = sdgen_cmd(dir) + "--steps 2 --seed 3 --json --max-batch " + max_batch +
                            " --prompt-file " + q(dir + "/p.txt");
    std::string log;
    // stdout alone in `log` (test::run adds 2>&1 after the group).
    EXPECT_EQ(
        test::run("{ " + cmd + " -o " + q(out + "/{index}.png") + " 2>" + q(dir + "/err.txt") + "; }",
                  &log),
        1);
    const std::string err = read_file(dir + "/err.txt");
    EXPECT_NE(err.find("p.txt line 2: "), std::string::npos) << err;
    EXPECT_NE(err.find("1.png"), std::string::npos) << err;
    EXPECT_NE(err.find("3 written, 0 skipped (already there), 1 failed"), std::string::npos) << err;
    EXPECT_EQ(files(out), std::set<std::string>({"0.png", "2.png", "3.png"}));
    std::vector<int> indices;
    std::istringstream lines(log);
    for (std::string line; std::getline(lines, line);)
      indices.push_back(nlohmann::json::parse(line)["index"].get<int>());
    EXPECT_EQ(indices, std::vector<int>({0, 2, 3})) << log;
    EXPECT_EQ(test::run(cmd + " --fail-fast -o " + q(ff + "/{index}.png") + " 2>&1", &log), 1);
    EXPECT_EQ(files(ff), std::set<std::string>({"0.png"})) << log;
  }
}

// --prompt-file -: each line's image is written and its --json line printed
// before the next line is read (a program driving sdgen through a pipe waits
// for that line before it sends the next prompt).
TEST(CLIBatch, StandardInputAnswersEachLineBeforeTheNext) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("stdin_turns");
  write_file(dir + "/drive.sh",
             "set -euo pipefail\n"
             "coproc SD { " + sdgen_cmd(dir) + "--steps 2 --seed 4 --json -q --prompt-file - -o " +
                 q(dir + "/{index}.png") + " 2>" + q(dir + "/err.txt") + "; }\n"
             "for p in 'a red fox' 'a blue cat' 'a green tree'; do\n"
             "  echo \"$p\" >&\"${SD[1]}\"\n"
             "  read -r -t 120 line <&\"${SD[0]}\" || { echo \"no line for $p\"; exit 3; }\n"
             "  echo \"$line\"\n"
             "done\n"
             "to_sdgen=${SD[1]}\n"
             "exec {to_sdgen}>&-\n"
             "wait \"$SD_PID\"\n");
  std::string log;
  ASSERT_EQ(test::run("bash " + q(dir + "/drive.sh"), &log), 0)
      << log << read_file(dir + "/err.txt");
  std::istringstream lines(log);
  int n = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["index"], n);
    EXPECT_TRUE(fs::is_regular_file(j["path"].get<std::string>())) << line;
  }
  EXPECT_EQ(n, 3) << log;
}

}  // namespace
}  // namespace sdgen
