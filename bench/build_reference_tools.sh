#!/usr/bin/env bash
# Build llama.cpp's own llama-perplexity and llama-bench from the very source that the installed
# llama-cpp-python compiled (its sdist's vendor/llama.cpp), with the same CMake defaults that
# llama-cpp-python's build uses (Release, GGML_NATIVE, OpenMP, shared libraries), so kvsweep and
# the reference tools run the same kernels.
#
#   bench/build_reference_tools.sh [BUILD_DIR]        (default: ~/.cache/kvsweep/llama-ref)
#
# Needs: pip (to fetch the sdist from PyPI once), cmake, a C/C++ compiler. About 5-10 minutes
# on 2 cores. Prints the directory holding the two binaries.
set -euo pipefail

PYTHON=${PYTHON:-python}
BUILD=${1:-${HOME}/.cache/kvsweep/llama-ref}
VERSION=$("$PYTHON" -c 'from importlib.metadata import version; print(version("llama-cpp-python"))')
SDIST_DIR=${SDIST_DIR:-${BUILD}/sdist}
SRC="${SDIST_DIR}/llama_cpp_python-${VERSION}/vendor/llama.cpp"

if [ ! -f "${SRC}/CMakeLists.txt" ]; then
    mkdir -p "${SDIST_DIR}"
    "$PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==${VERSION}" -d "${SDIST_DIR}" >&2
    tar xzf "${SDIST_DIR}/llama_cpp_python-${VERSION}.tar.gz" -C "${SDIST_DIR}"
fi

cmake -S "${SRC}" -B "${BUILD}/build" -G "${CMAKE_GENERATOR:-Ninja}" \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF ${CMAKE_ARGS:-} >&2
cmake --build "${BUILD}/build" -j "${JOBS:-2}" --target llama-perplexity llama-bench >&2
echo "${BUILD}/build/bin"
