# SDGEN_SANITIZE: AddressSanitizer + UndefinedBehaviorSanitizer for the whole
# build (library, sdgen, tools, tests). Included from CMakeLists.txt before
# any target is defined. libtorch itself stays uninstrumented (a prebuilt
# shared library), so its internals are not checked; sdgen's code is.
#
#   cmake -B build-asan -DSDGEN_SANITIZE=ON && cmake --build build-asan --target sanitize-tests
#   ASAN_OPTIONS=detect_leaks=0 ctest --test-dir build-asan -L sanitize
option(SDGEN_SANITIZE "Build everything with AddressSanitizer and UndefinedBehaviorSanitizer" OFF)

# The tests that finish quickly under the sanitizers (parsers, loaders, the
# tiny-model pipeline and the sdgen binary end to end); CI runs them with
# `ctest -L sanitize`. CMakeLists.txt gives these the LABEL "sanitize".
# Measured under ASan+UBSan on 2 cores: test_bad_inputs 270 s, test_pipeline
# 59 s, test_smoke 51 s, test_model 45 s, test_serve 81 s (the server and
# its HTTP parsing, with a busy machine), the others < 30 s each;
# test_cli_batch (386 s, the same binary paths as test_smoke and
# test_bad_inputs with more prompts) is left out to keep CI short.
# test_attention (7 s) and test_layers (1 s) cover the CPU kernels' pointer
# arithmetic (row-parallel attention, Winograd, bf16 GroupNorm) at edge sizes.
set(SDGEN_SANITIZE_TESTS
    test_safetensors test_tokenizer test_prompt_weights test_prompt_file test_a1111
    test_image_io test_checkpoint test_model test_pipeline test_smoke test_bad_inputs
    test_convert test_serve test_attention test_layers)

if(SDGEN_SANITIZE)
  set(SDGEN_SANITIZE_FLAGS -fsanitize=address,undefined -fno-omit-frame-pointer
                           -fno-sanitize-recover=undefined
                           # libtorch's classes come from an uninstrumented library
                           # whose type info the vptr check cannot always see.
                           -fno-sanitize=vptr)
  # -O1 (after the build type's -O2/-O3): readable reports, shorter compiles;
  # -g1: line numbers in the reports without full debug info.
  add_compile_options(${SDGEN_SANITIZE_FLAGS} -O1 -g1)
  add_link_options(${SDGEN_SANITIZE_FLAGS})
  message(STATUS "sdgen: building with ASan + UBSan")
endif()

# Builds the sdgen binaries the end-to-end tests drive plus the tests above
# (CMakeLists.txt adds each labelled test to it).
add_custom_target(sanitize-tests)
add_dependencies(sanitize-tests sdgen sdgen-mkmodel)
