"""Where kvsweep keeps files that are not part of a run: generated models, hash cache."""

from __future__ import annotations

import os
from pathlib import Path


def fmt_bytes(n: int) -> str:
    """'24.0 GiB', '8.0 MiB': human sizes for tables and messages."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.1f} MiB"


def cache_dir() -> Path:
    """$KVSWEEP_CACHE_DIR, else $XDG_CACHE_HOME/kvsweep, else ~/.cache/kvsweep."""
    explicit = os.environ.get("KVSWEEP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvsweep"
