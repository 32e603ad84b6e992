"""Where kvsweep keeps files that are not part of a run: generated models, hash cache."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$KVSWEEP_CACHE_DIR, else $XDG_CACHE_HOME/kvsweep, else ~/.cache/kvsweep."""
    explicit = os.environ.get("KVSWEEP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvsweep"
