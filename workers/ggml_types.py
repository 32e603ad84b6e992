"""The GGML types of the llama.cpp build this process loaded: names, enum numbers, block sizes.

A cell names its cache types; the enum number llama.cpp wants is this build's, looked up here
when a context is made (forks reuse numbers: TurboQuant's turbo2 is 42, mainline's q2_0 too).

ggml exports no type count, and reading its type table past the end is undefined behaviour
(`ggml_type_name` and `ggml_get_type_traits` only assert in debug builds).
`ggml_validate_row_data(t, buf, 1)` does check the bound: past the count it says "invalid type"
on stderr; below it, it divides by the type's size and complains about the size instead (or
accepts a 1-byte type). Its division by a size of 0, the removed slots' (Q4_2, Q4_0_4_4, ...),
is a SIGFPE on x86. So the scan runs in a child process: it skips the slots known to be
removed, asks validate_row_data about the others (reading what it says on fd 2), and reads
name, block size and bytes per block of every type below the count; if a slot kills it anyway
(a fork that removed another type), the parent notes the slot and scans on after it. The result
is cached per build (the sha256 of libggml-base), so a host pays for it once.

    python -m kvsweep.workers.ggml_types          prints this build's types
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache

from kvsweep.paths import cache_dir

# Enum slots mainline and the TurboQuant fork removed (their block size is 0): never probed.
REMOVED = frozenset({4, 5, 31, 32, 33, 36, 37, 38})
MAX_ID = 256


@dataclass(frozen=True)
class GgmlType:
    id: int
    name: str
    block_size: int  # values per block
    type_size: int  # bytes per block

    @property
    def bits_per_value(self) -> float:
        return 8.0 * self.type_size / self.block_size


def _base_lib() -> ctypes.CDLL:
    from kvsweep.workers.probe import bundled_lib

    base = bundled_lib("ggml-base")
    base.ggml_validate_row_data.restype = ctypes.c_bool
    base.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    base.ggml_type_name.restype = ctypes.c_char_p
    base.ggml_type_name.argtypes = [ctypes.c_int]
    base.ggml_blck_size.restype = ctypes.c_int64
    base.ggml_blck_size.argtypes = [ctypes.c_int]
    base.ggml_type_size.restype = ctypes.c_size_t
    base.ggml_type_size.argtypes = [ctypes.c_int]
    return base


def _scan_child(start: int) -> None:
    """Child process: one JSON line per slot from `start`, then {"count": n} at the end."""
    import os
    import tempfile

    base = _base_lib()
    buf = ctypes.create_string_buffer(16)
    said = tempfile.TemporaryFile()
    os.dup2(said.fileno(), 2)  # what ggml_validate_row_data prints (C stderr is unbuffered)
    for t in range(start, MAX_ID):
        if t in REMOVED:
            continue
        print(json.dumps({"probing": t}), flush=True)
        said.seek(0)
        said.truncate()
        base.ggml_validate_row_data(t, buf, 1)
        said.seek(0)
        if b"invalid type" in said.read():
            print(json.dumps({"count": t}), flush=True)
            return
        blck = int(base.ggml_blck_size(t))
        if blck > 0:
            print(json.dumps({"id": t, "name": base.ggml_type_name(t).decode(), "block_size": blck,
                              "type_size": int(base.ggml_type_size(t))}), flush=True)
    print(json.dumps({"count": MAX_ID}), flush=True)


def scan() -> list[GgmlType]:
    """Every type of this build (child processes; see the module docstring)."""
    found: list[GgmlType] = []
    start = 0
    for _ in range(MAX_ID):
        code = f"from kvsweep.workers.ggml_types import _scan_child; _scan_child({start})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        probing = None
        for line in proc.stdout.splitlines():
            entry = json.loads(line)
            if "count" in entry:
                return found
            if "probing" in entry:
                probing = entry["probing"]
            else:
                found.append(GgmlType(**entry))
        if probing is None:
            raise RuntimeError(f"the GGML type scan failed to start: {proc.stderr[-2000:]}")
        start = probing + 1  # that slot killed the child: a removed type; go on after it
    return found


def build_fingerprint() -> str:
    """A short sha256 of this build's libggml-base: what identifies a build when its commit
    does not (a tree without .git reports 'unknown')."""
    from kvsweep.workers.probe import bundled_lib_path

    h = hashlib.sha256()
    with open(bundled_lib_path("ggml-base"), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def build_types() -> dict[str, GgmlType]:
    """This build's types by name, from the cache or a fresh scan."""
    path = cache_dir() / "ggml-types" / f"{build_fingerprint()}.json"
    if path.exists():
        entries = json.loads(path.read_text())
    else:
        entries = [asdict(t) for t in scan()]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        tmp.replace(path)
    return {e["name"]: GgmlType(**e) for e in entries}


class UnknownType(KeyError):
    pass


def type_id(name: str) -> int:
    """This build's enum number of the type called `name`."""
    types = build_types()
    if name not in types:
        raise UnknownType(f"this llama.cpp build has no type {name!r} (it has: "
                          f"{', '.join(sorted(types))})")
    return types[name].id


if __name__ == "__main__":
    for t in sorted(build_types().values(), key=lambda t: t.id):
        print(f"{t.id:>3}  {t.name:<10} block {t.block_size:>4}  {t.type_size:>4} bytes  {t.bits_per_value:.4g} bits/value")
