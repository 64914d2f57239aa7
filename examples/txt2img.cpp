// Text to PNG with the sdgen library: load a model, generate, write.
//   txt2img MODEL_DIR PROMPT OUT.png [STEPS] [SIZE]
// MODEL_DIR: a diffusers folder or .safetensors file, e.g. the model sdgen
// installs in <prefix>/share/sdgen/models/default.

#include <cstdlib>
#include <exception>
#include <iostream>

#include "sdgen/image_io.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/runtime.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: txt2img MODEL_DIR PROMPT OUT.png [STEPS] [SIZE]\n";
    return 2;
  }
  try {
    sdgen::init_cpu_runtime();  // threads, allocator, BLAS as sdgen sets them
    sdgen::LoadOptions load;
    load.model_path = argv[1];
    sdgen::StableDiffusionModel model = sdgen::load_model(load);

    sdgen::Pipeline pipeline(model);
    sdgen::GenerationRequest request;
    request.prompt = argv[2];
    request.steps = argc > 4 ? std::atoi(argv[4]) : 20;
    request.width = request.height = argc > 5 ? std::atoi(argv[5]) : 256;
    request.seed = 42;
    const sdgen::GenerationResult result = pipeline.generate(request);

    sdgen::write_png(argv[3], result.images_u8[0]);
    std::cout << "wrote " << argv[3] << "\n";
  } catch (const std::exception& e) {
    std::cerr << "txt2img: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
