# CMake settings for the Dockerfile's static build (the cmake crate passes this file as the toolchain of
# every C/C++ dependency it builds). HiGHS builds a shared "extras" library by default, and a shared
# library cannot link with the `-static` flags a `+crt-static` build passes; highs-sys links only the
# static HiGHS library, so the extras are built static too.
set(BUILD_SHARED_EXTRAS_LIB OFF CACHE BOOL "HiGHS extras as a static library" FORCE)
