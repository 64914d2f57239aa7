// Prompt files (plain and JSON lines, bad lines with their numbers), output
// name patterns and --shard partitions.

#include <set>

#include "sdgen/error.h"
#include "sdgen/output_pattern.h"
#include "sdgen/prompt_file.h"
#include "sdgen/settings.h"
#include "test_util.h"

namespace sdgen {
namespace {

using Kind = PromptLine::Kind;

TEST(PromptFile, PlainJsonCommentsAndBlankLines) {
  const auto lines = parse_prompt_text(
      "a red fox\r\n"
      "  # a comment\n"
      "\n"
      "   \t\n"
      "{\"prompt\": \"a cat\", \"negative_prompt\": \"dog\", \"seed\": 18446744073709551615, "
      "\"steps\": 12, \"cfg_scale\": 6.5, \"guidance_rescale\": 0.7, \"width\": 640, \"height\": "
      "384, \"sampler\": \"Euler "
      "a\", "
      "\"scheduler\": \"Karras\", \"batch_size\": 2, \"clip_skip\": 2, \"init_image\": \"in.png\", "
      "\"strength\": 0.5, \"output\": \"x/{index}.png\"}\n"
      "  {\"seed\": 3}  \n"
      "(emphasis:1.2) and {braces} later");
  ASSERT_EQ(lines.size(), 7u);
  EXPECT_EQ(lines[0].kind, Kind::entry);
  EXPECT_EQ(*lines[0].entry.settings.find("prompt"), "a red fox");
  EXPECT_EQ(lines[0].entry.line, 1);
  for (int i : {1, 2, 3}) EXPECT_EQ(lines[i].kind, Kind::skip) << i;
  ASSERT_EQ(lines[4].kind, Kind::entry) << lines[4].error;
  EXPECT_EQ(lines[4].entry.line, 5);
  const Settings e = resolve_settings({&lines[4].entry.settings});
  EXPECT_EQ(e.prompt, "a cat");
  EXPECT_EQ(e.negative_prompt, "dog");
  EXPECT_EQ(*e.seed, 18446744073709551615ull);
  EXPECT_EQ(e.steps, 12);
  EXPECT_EQ(e.cfg_scale, 6.5);
  EXPECT_EQ(e.guidance_rescale, 0.7);
  EXPECT_EQ(e.width, 640);
  EXPECT_EQ(e.height, 384);
  EXPECT_EQ(e.sampler, Sampler::euler_a);
  EXPECT_EQ(e.schedule, SigmaSchedule::karras);
  EXPECT_EQ(e.batch_size, 2);
  EXPECT_EQ(e.clip_skip, 2);
  EXPECT_EQ(e.init_image, "in.png");
  EXPECT_EQ(e.strength, 0.5);
  EXPECT_EQ(e.output, "x/{index}.png");
  EXPECT_EQ(lines[4].entry.settings.values().size(), 15u);
  ASSERT_EQ(lines[5].kind, Kind::entry);
  EXPECT_FALSE(lines[5].entry.settings.has("prompt"));  // falls back on --prompt
  EXPECT_EQ(*lines[5].entry.settings.find("seed"), 3u);
  EXPECT_EQ(*lines[6].entry.settings.find("prompt"), "(emphasis:1.2) and {braces} later");
}

TEST(PromptFile, BadLinesNameTheLineAndTheKey) {
  struct Bad {
    std::string line;
    std::string words;
  };
  const std::vector<Bad> bad = {
      {"{\"prompt\": \"x\"", "invalid JSON"},
      {"{\"prompt\": \"x\", \"colour\": 1}", "unknown key \"colour\""},
      {"{\"prompt\": 3}", "\"prompt\" must be a string"},
      {"{\"width\": 63}", "\"width\" 63: must be a positive multiple of 8"},
      {"{\"height\": 0}", "\"height\" 0: must be a positive multiple of 8"},
      {"{\"width\": 16384}", "at most 8192"},
      {"{\"steps\": 0}", "\"steps\" 0: must be between 1 and 1000"},
      {"{\"steps\": 2.5}", "\"steps\" must be a whole number"},
      {"{\"batch_size\": 65}", "\"batch_size\""},
      {"{\"seed\": -1}", "\"seed\""},
      {"{\"strength\": 0}", "\"strength\""},
      {"{\"cfg_scale\": \"7\"}", "\"cfg_scale\" must be a number"},
      {"{\"guidance_rescale\": 1.5}", "\"guidance_rescale\""},
      {"{\"guidance_rescale\": -0.1}", "\"guidance_rescale\""},
      {"{\"scheduler\": \"exponential\"}", "\"scheduler\" \"exponential\": expected karras"},
      {"{\"sampler\": \"nope\"}", "\"sampler\" \"nope\": unknown sampler (valid: ddim"},
      {"{\"eta\": 2}", "\"eta\" 2: must be between 0 and 1"},
      {"{\"output\": \"\"}", "\"output\" \"\": must not be empty"},
      {"{} {}", "invalid JSON"},
  };
  for (const auto& b : bad) {
    const auto l = parse_prompt_line(b.line, 17);
    EXPECT_EQ(l.kind, Kind::error) << b.line;
    EXPECT_EQ(l.error.rfind("line 17: ", 0), 0u) << l.error;
    EXPECT_NE(l.error.find(b.words), std::string::npos) << b.line << " -> " << l.error;
  }
}

TEST(OutputPattern, FieldsPrintfAndEscapes) {
  OutputFields f;
  f.index = 7;
  f.seed = 42;
  f.prompt = "A (red:1.2) fox, in the SNOW!";
  f.line = 12;
  EXPECT_EQ(expand_output_pattern("out/{index}-{seed}-{prompt}-{line}.png", f),
            "out/7-42-a-red-1-2-fox-in-the-snow-12.png");
  EXPECT_EQ(expand_output_pattern("img_%03d.png", f), "img_007.png");
  EXPECT_EQ(expand_output_pattern("img_%d_%5d.png", f), "img_7_    7.png");
  EXPECT_EQ(expand_output_pattern("100%%_{{x}}_%.png", f), "100%_{x}_%.png");
  EXPECT_THROW(expand_output_pattern("{nope}.png", f), Error);
  EXPECT_THROW(expand_output_pattern("{index.png", f), Error);
  EXPECT_TRUE(output_pattern_has_fields("a/{seed}.png"));
  EXPECT_TRUE(output_pattern_has_fields("a/%04d.png"));
  EXPECT_FALSE(output_pattern_has_fields("a/100%%.png"));
  EXPECT_FALSE(output_pattern_has_fields("out.png"));
  EXPECT_EQ(with_index_suffix("dir/out.png", 3), "dir/out-3.png");
  EXPECT_EQ(prompt_slug("  ***  "), "prompt");
  EXPECT_EQ(prompt_slug("\xe6\x9d\xb1\xe4\xba\xac tower"), "tower");
  EXPECT_LE(prompt_slug(std::string(500, 'a') + " b").size(), 40u);
  EXPECT_EQ(prompt_slug("a b", 1), "a");
}

TEST(Shard, ParseAndPartitionExactly) {
  EXPECT_EQ(parse_shard("0/1").count, 1);
  const Shard s = parse_shard("2/5");
  EXPECT_EQ(s.index, 2);
  EXPECT_EQ(s.count, 5);
  for (const char* bad : {"", "1", "5/5", "-1/3", "a/3", "1/0", "1/", "/3", "1/3/4"})
    EXPECT_THROW(parse_shard(bad), Error) << bad;
  // Every entry belongs to exactly one shard, whatever N.
  for (int n = 1; n <= 7; ++n) {
    std::vector<int> owners(50, 0);
    for (int k = 0; k < n; ++k)
      for (int e = 0; e < 50; ++e)
        if (in_shard(e, parse_shard(std::to_string(k) + "/" + std::to_string(n)))) ++owners[e];
    for (int e = 0; e < 50; ++e) EXPECT_EQ(owners[e], 1) << "N=" << n << " entry " << e;
  }
}

}  // namespace
}  // namespace sdgen
