# SDGEN_FUZZ: libFuzzer targets for the parsers that read untrusted input
# (fuzz/fuzz_<name>.cpp). Clang only. The parsers are the libtorch-free layers'
# sources (no libtorch), so each target builds in seconds and runs fast.
#
#   CC=clang CXX=clang++ cmake -B build-fuzz -DSDGEN_FUZZ=ON && cmake --build build-fuzz --target fuzz
#   build-fuzz/fuzz_tokenizer fuzz/corpus/tokenizer      (or scripts/fuzz.sh SECONDS)
option(SDGEN_FUZZ "Build the libFuzzer targets (clang only)" OFF)

if(SDGEN_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "SDGEN_FUZZ needs clang (e.g. CXX=clang++); found ${CMAKE_CXX_COMPILER_ID}")
  endif()
  set(SDGEN_FUZZ_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined
                       -fno-omit-frame-pointer -g -O1)

  # The parsers, instrumented for coverage but without libFuzzer's main: the
  # sources of the two libtorch-free layers (CMakeLists.txt: sdgen_formats,
  # sdgen_text), compiled again with the fuzzing flags.
  add_library(sdgen_fuzz_parsers STATIC ${SDGEN_FORMATS_SOURCES} ${SDGEN_TEXT_SOURCES})
  target_include_directories(sdgen_fuzz_parsers
    PUBLIC ${CMAKE_SOURCE_DIR}/include
    PRIVATE ${CMAKE_SOURCE_DIR}/src)
  target_include_directories(sdgen_fuzz_parsers SYSTEM PRIVATE ${STB_INCLUDE_DIR})
  if(EXISTS "${SDGEN_EXTRA_INCLUDE_DIR}")
    target_include_directories(sdgen_fuzz_parsers SYSTEM PUBLIC "${SDGEN_EXTRA_INCLUDE_DIR}")
  endif()
  if(TARGET nlohmann_json::nlohmann_json)
    target_link_libraries(sdgen_fuzz_parsers PUBLIC nlohmann_json::nlohmann_json)
  endif()
  target_link_libraries(sdgen_fuzz_parsers PUBLIC ZLIB::ZLIB)
  target_compile_definitions(sdgen_fuzz_parsers PUBLIC SDGEN_VERSION="${PROJECT_VERSION}")
  target_compile_options(sdgen_fuzz_parsers PUBLIC ${SDGEN_FUZZ_FLAGS}
                         PRIVATE -fsanitize=fuzzer-no-link)
  target_link_options(sdgen_fuzz_parsers PUBLIC -fsanitize=address,undefined)

  add_custom_target(fuzz)
  file(GLOB SDGEN_FUZZ_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/fuzz/fuzz_*.cpp)
  foreach(src ${SDGEN_FUZZ_SOURCES})
    get_filename_component(name ${src} NAME_WE)
    add_executable(${name} ${src})
    target_link_libraries(${name} PRIVATE sdgen_fuzz_parsers)
    target_compile_options(${name} PRIVATE -fsanitize=fuzzer)
    target_link_options(${name} PRIVATE -fsanitize=fuzzer)
    # The tokenizer target uses the real CLIP vocabulary when the tiny model is there.
    target_compile_definitions(${name} PRIVATE
      SDGEN_FUZZ_TOKENIZER_DIR="${SDGEN_SHARED_DIR}/models/sd1-tiny/tokenizer"
      SDGEN_FUZZ_SPIECE_MODEL="${CMAKE_SOURCE_DIR}/fuzz/data/captions-spiece.model")
    add_dependencies(fuzz ${name})
  endforeach()
endif()
