"""sha256 of model and corpus files, cached by (path, size, mtime) because models are large."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from kvsweep.paths import cache_dir


def _cache_file() -> Path:
    return cache_dir() / "sha256.json"


def _load() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def file_sha256(path: str | os.PathLike, use_cache: bool = True) -> str:
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache = _load() if use_cache else {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    if use_cache:
        cache = _load()
        cache[key] = digest
        target = _cache_file()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, target)
    return digest


def text_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
