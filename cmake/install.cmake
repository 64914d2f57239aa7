# cmake --install (bin/sdgen, sdgen-bench, sdgen-mkmodel; the inference library
# and its public headers with a CMake package, find_package(sdgen) giving
# sdgen::sdgen; share/sdgen/models/default) and cpack -G DEB (the same files
# under /usr, depending on the Debian packages sdgen loads).
#
#   cmake --install build --prefix P          P/bin/sdgen finds P/share/sdgen/models/default
#   (cd build && cpack -G DEB)                build/sdgen_<version>_<arch>.deb
#
# Everything is relative to the prefix, so a moved install keeps working
# (src/cli/default_model.cpp finds the model next to the executable).
# sdgen-train and sdgen-spm are development tools and stay in the build folder.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

target_compile_features(sdgen_formats PUBLIC cxx_std_17)
install(TARGETS sdgen sdgen-bench sdgen-mkmodel RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS sdgen_lib sdgen_text sdgen_formats EXPORT sdgenTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY include/sdgen DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY models/default/ DESTINATION ${CMAKE_INSTALL_DATADIR}/sdgen/models/default)

set(SDGEN_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/sdgen)
install(EXPORT sdgenTargets NAMESPACE sdgen:: DESTINATION ${SDGEN_CMAKE_DIR})
# config.h includes nlohmann/json.hpp: its package is a dependency when it was
# found as one (else its header came from the system or SDGEN_EXTRA_INCLUDE_DIR).
if(TARGET nlohmann_json::nlohmann_json)
  set(SDGEN_NLOHMANN_JSON_PACKAGE ON)
else()
  set(SDGEN_NLOHMANN_JSON_PACKAGE OFF)
endif()
configure_package_config_file(cmake/sdgenConfig.cmake.in
  ${CMAKE_BINARY_DIR}/sdgenConfig.cmake INSTALL_DESTINATION ${SDGEN_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/sdgenConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/sdgenConfig.cmake ${CMAKE_BINARY_DIR}/sdgenConfigVersion.cmake
        DESTINATION ${SDGEN_CMAKE_DIR})

# ---- Debian package --------------------------------------------------------
# Depends: libopenblas0-pthread (libtorch's BLAS; sdgen sets its thread count
# through it, src/runtime.cpp) and what dpkg-shlibdeps finds the binaries need
# (libc6, libstdc++6, libgcc-s1, zlib1g, libtorch with its version). CPack
# needs `file` to find the binaries it hands to dpkg-shlibdeps (dpkg-dev);
# without the two, libtorch's runtime package is named from dpkg-query.
set(SDGEN_DEB_DEPENDS "libopenblas0-pthread")
find_program(SDGEN_DPKG_SHLIBDEPS dpkg-shlibdeps)
find_program(SDGEN_FILE_PROGRAM file)
find_program(SDGEN_DPKG_QUERY dpkg-query)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS OFF)
if(SDGEN_DPKG_SHLIBDEPS AND SDGEN_FILE_PROGRAM)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
elseif(SDGEN_DPKG_QUERY AND TORCH_LIBRARY)
  get_filename_component(torch_library_file "${TORCH_LIBRARY}" REALPATH)
  execute_process(COMMAND ${SDGEN_DPKG_QUERY} -S "${torch_library_file}"
                  OUTPUT_VARIABLE torch_package RESULT_VARIABLE torch_package_rc ERROR_QUIET)
  if(torch_package_rc EQUAL 0)
    string(REGEX REPLACE "[:,].*" "" torch_package "${torch_package}")  # "libtorch1.13:amd64: /usr/..."
    string(PREPEND SDGEN_DEB_DEPENDS "${torch_package}, ")
  endif()
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME sdgen)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "sdgen maintainers <maintainers@users.noreply.r-seed-43b01c93.example>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Stable Diffusion image generator (C++, libtorch)")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # sdgen_<version>_<arch>.deb
set(CPACK_DEBIAN_PACKAGE_SECTION graphics)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "${SDGEN_DEB_DEPENDS}")
# Building against the library (find_package(sdgen)) needs the headers its
# public headers include.
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "libtorch-dev, nlohmann-json3-dev, zlib1g-dev")
include(CPack)
