"""A GGUF file's metadata and tensor table, read fast: scalars and short arrays as values, long
arrays as their length only.

The `gguf` package's GGUFReader parses every field into numpy views, among them the
tokenizer's token list: at a 248,320-token vocabulary (Qwen3.5/3.6) that took 28 s and 48 MB
per read, on every worker for every model load. The memory planner needs a few numbers and the
vocabulary's size, so this reads the header sequentially from a memory map and skips array
payloads, touching only the metadata pages (format: ggml's docs/gguf.md).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
LONG_ARRAY = 4096  # arrays longer than this are kept as their length only


class GGUFFormatError(ValueError):
    pass


@dataclass
class Tensor:
    name: str
    dims: tuple[int, ...]
    type: int  # ggml type number
    offset: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.type)]
        return self.n_elements // block * size


@dataclass
class ArrayLength:
    """A long array's place in the metadata: its element type and length, not its values."""

    type: int
    length: int


@dataclass
class Header:
    version: int
    fields: dict[str, object] = field(default_factory=dict)
    tensors: list[Tensor] = field(default_factory=list)

    def get(self, key: str, default=None):
        return self.fields.get(key, default)

    def array_length(self, key: str) -> int:
        v = self.fields.get(key)
        if isinstance(v, ArrayLength):
            return v.length
        return len(v) if isinstance(v, list) else 0


class _Cursor:
    def __init__(self, buf):
        self.buf, self.at = buf, 0

    def unpack(self, fmt: str):
        v = struct.unpack_from(fmt, self.buf, self.at)[0]
        self.at += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.unpack("<Q")
        s = bytes(self.buf[self.at : self.at + n])
        self.at += n
        return s.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        buf, at, unpack = self.buf, self.at, struct.unpack_from
        for _ in range(count):
            at += 8 + unpack("<Q", buf, at)[0]
        self.at = at

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if count > LONG_ARRAY:
                if etype == _STRING:
                    self.skip_strings(count)
                elif etype in _SCALARS:
                    self.at += count * struct.calcsize(_SCALARS[etype])
                else:
                    raise GGUFFormatError(f"a long array of type {etype} cannot be skipped")
                return ArrayLength(etype, count)
            return [self.value(etype) for _ in range(count)]
        raise GGUFFormatError(f"unknown metadata value type {vtype}")


def read_header(path: str) -> Header:
    """The metadata and tensor table of a GGUF file; GGUFFormatError when it is not one."""
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file
            raise GGUFFormatError(f"{path} is empty") from exc
    try:
        if buf[:4] != MAGIC:
            raise GGUFFormatError(f"{path} does not start with GGUF's magic")
        c = _Cursor(buf)
        c.at = 4
        try:
            version, n_tensors, n_kv = c.unpack("<I"), c.unpack("<Q"), c.unpack("<Q")
            header = Header(version)
            for _ in range(n_kv):
                key = c.string()
                header.fields[key] = c.value(c.unpack("<I"))
            for _ in range(n_tensors):
                name, n_dims = c.string(), c.unpack("<I")
                dims = tuple(c.unpack("<Q") for _ in range(n_dims))
                header.tensors.append(Tensor(name, dims, c.unpack("<I"), c.unpack("<Q")))
        except struct.error as exc:
            raise GGUFFormatError(f"{path} ends inside its metadata (truncated?)") from exc
        return header
    finally:
        buf.close()
