"""What an out-of-memory failure asked for, read from llama.cpp's log.

llama.cpp states the size of a failed allocation only in its log, in backend-specific words;
the OOM row records it (needed_bytes) next to the host's memory.
"""

from __future__ import annotations

import re

_MIB = 1024 * 1024
# (pattern, multiplier) for the backends' messages (ggml-backend.cpp, ggml-cuda.cu,
# ggml-metal-device.m, ggml-vulkan.cpp, llama-context.cpp)
_PATTERNS = (
    (re.compile(r"failed to allocate buffer of size (\d+)"), 1),
    (re.compile(r"allocating ([\d.]+) MiB on device \d+: cudaMalloc failed"), _MIB),
    (re.compile(r"failed to allocate buffer, size = \s*([\d.]+) MiB"), _MIB),
    (re.compile(r"failed to allocate output buffer of size ([\d.]+) MiB"), _MIB),
    (re.compile(r"[Aa]llocation of size (\d+) failed"), 1),
)


def requested_bytes(log_text: str) -> int:
    """The largest allocation the log says failed, in bytes (0 when it says none)."""
    sizes = [float(m.group(1)) * mult for pattern, mult in _PATTERNS for m in pattern.finditer(log_text)]
    return int(max(sizes)) if sizes else 0
