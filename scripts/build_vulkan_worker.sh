#!/usr/bin/env bash
# A kvsweep worker on llama.cpp's Vulkan backend, in an environment of its own
# (scripts/build_worker.py with -DGGML_VULKAN=ON), on this machine; with Mesa's lavapipe it runs on
# the CPU as a real Vulkan device (docs/vulkan.md).
#
#   scripts/build_vulkan_worker.sh [VENV]    (default ~/.cache/kvsweep/worker-builds/venvs/vulkan-pyXY)
#
# 1. Debian/Ubuntu packages (installed when missing and this runs as root): glslc (the shader
#    compiler llama.cpp's build runs), mesa-vulkan-drivers (lavapipe), libvulkan-dev (the loader),
#    spirv-headers.
# 2. Vulkan headers new enough for llama.cpp (they must have vk::LayerSettingEXT, Vulkan 1.3.261+):
#    Debian 12's 1.3.239 are not; then Debian 13's libvulkan-dev and spirv-headers 1.4.309 are
#    downloaded (apt-get download, with a sources list and package lists of their own, so the
#    machine's apt is not touched) and unpacked into a prefix, not installed.
# 3. scripts/build_worker.py --name vulkan --cmake-args "-DGGML_VULKAN=ON ..." into VENV (the wheel
#    is cached by its inputs: a second run takes seconds; the first about 7 minutes on 2 cores).
# Prints VENV. Extra flags for build_worker.py: BUILD_WORKER_ARGS (e.g. --no-editable).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PYTHON=${PYTHON:-python}
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/kvsweep"
PYV=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
VENV=${1:-$CACHE/worker-builds/venvs/vulkan-py$PYV}
PREFIX=${VULKAN_PREFIX:-$CACHE/vulkan-headers}
say() { echo "build_vulkan_worker: $*" >&2; }

if ! command -v dpkg >/dev/null; then
    # the recipe is Debian's/Ubuntu's; elsewhere build with build_worker.py (docs/vulkan.md)
    say "not a Debian-like system: no Vulkan worker built (its tests are skipped)"
    exit 0
fi
missing=()
for pkg in glslc mesa-vulkan-drivers libvulkan-dev spirv-headers; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "missing packages: ${missing[*]} and not root: no Vulkan worker built (its tests are"
        say "skipped); install them (apt-get install ${missing[*]}) and run this again"
        exit 0
    fi
    say "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

cmake_args="-DGGML_VULKAN=ON"
if grep -q VkLayerSettingEXT /usr/include/vulkan/vulkan_core.h 2>/dev/null; then
    say "the system's Vulkan headers are new enough"
else
    if ! grep -q VkLayerSettingEXT "$PREFIX/usr/include/vulkan/vulkan_core.h" 2>/dev/null; then
        say "the system's Vulkan headers are too old for llama.cpp: fetching Debian 13's into $PREFIX"
        work=$(mktemp -d)
        trap 'rm -rf "$work"' EXIT
        mkdir -p "$work/lists/partial" "$work/archives/partial"
        # the machine's own Debian mirror (its URIs: / deb lines, not comments)
        mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
                 | grep -E '^(URIs:|deb )' | grep -oE 'https?://[^ ]*debian[^ ]*' | grep -v security | head -1 || true)
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror:-http://deb.debian.org/debian} trixie main" \
            > "$work/sources.list"
        opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work" -o Debug::NoLocking=1
              -o APT::Sandbox::User=root)
        apt-get "${opts[@]}" update -qq >&2
        (cd "$work" && apt-get "${opts[@]}" download libvulkan-dev spirv-headers >&2)
        mkdir -p "$PREFIX"
        for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$PREFIX"; done
    fi
    cmake_args="$cmake_args -DVulkan_INCLUDE_DIR=$PREFIX/usr/include -DCMAKE_PREFIX_PATH=$PREFIX/usr"
fi

# shellcheck disable=SC2086
"$PYTHON" "$HERE/build_worker.py" --venv "$VENV" --name vulkan --cmake-args "$cmake_args" \
    --system-site-packages ${BUILD_WORKER_ARGS:-}
