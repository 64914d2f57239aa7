#pragma once

// `sdgen convert IN -o OUT.safetensors [--dtype fp16|bf16|fp32]`: PyTorch
// checkpoints to safetensors without running their code (issue 30). main.cpp
// hands it the command line when argv[1] is "convert".

namespace sdgen::cli {

// Parses the subcommand's own flags (argv[0] is "sdgen", argv[1] "convert"),
// converts, prints a summary; returns the exit code (errors as one line).
int run_convert(int argc, char** argv);

}  // namespace sdgen::cli
