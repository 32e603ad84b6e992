"""The Parquet part files in a run directory's results folders, and which of them count.

The driver writes `part-SESSION-NNNNNN.parquet` at each flush (NNNNNN: the flush's number in
its session) and `part-SESSION-recovered.parquet` for attempts replayed from the log of a
driver that died. So that a long sweep of slow cells (about one flush per attempt) does not
leave one file per attempt, the driver merges its own attempts parts as it goes
(orchestrator/sink.py): `part-SESSION-AAAAAA-to-BBBBBB.parquet` holds exactly the rows of that
session's flushes AAAAAA to BBBBBB. A merged file is renamed into place before the files it
replaces are deleted, so for a while (or after a kill) both exist: every reader lists files
with `live_parts`, which leaves out a file whose range a merged file of the same session
covers. Each row is then read exactly once.
"""

from __future__ import annotations

import re
from pathlib import Path

_MERGED = re.compile(r"^part-(?P<session>.+)-(?P<first>\d{6})-to-(?P<last>\d{6})\.parquet$")
_FLUSHED = re.compile(r"^part-(?P<session>.+)-(?P<seq>\d{6})\.parquet$")


def part_name(session: str, first: int, last: int | None = None) -> str:
    """A flush's file (`last` None) or a merged file of flushes first..last (inclusive)."""
    if last is None:
        return f"part-{session}-{first:06d}.parquet"
    return f"part-{session}-{first:06d}-to-{last:06d}.parquet"


def span(name: str) -> tuple[str, int, int, bool] | None:
    """(session, first flush, last flush, merged?) of a part's file name; None for names
    outside the scheme (e.g. `-recovered`), which always count."""
    m = _MERGED.match(name)
    if m:
        return m["session"], int(m["first"]), int(m["last"]), True
    m = _FLUSHED.match(name)
    if m:
        return m["session"], int(m["seq"]), int(m["seq"]), False
    return None


def _merged_ranges(paths: list[Path]) -> dict[str, list[tuple[int, int, str]]]:
    """Per session, the flush ranges (first, last, file name) its merged files cover."""
    merged: dict[str, list[tuple[int, int, str]]] = {}
    for p in paths:
        s = span(p.name)
        if s is not None and s[3]:
            merged.setdefault(s[0], []).append((s[1], s[2], p.name))
    return merged


def split_parts(folder: Path) -> tuple[list[Path], list[Path]]:
    """(live, superseded) part files of `folder`, each sorted by name."""
    files = sorted(folder.glob("part-*.parquet")) if folder.exists() else []
    merged = _merged_ranges(files)
    live, superseded = [], []
    for f in files:
        s = span(f.name)
        covered = s is not None and any(
            a <= s[1] and s[2] <= b and name != f.name for a, b, name in merged.get(s[0], ()))
        (superseded if covered else live).append(f)
    return live, superseded


def live_parts(folder: Path) -> list[str]:
    """The part files whose rows count, as sorted path strings."""
    return [str(p) for p in split_parts(folder)[0]]


def split_tokens_parts(tokens_dir: Path, live_attempts: list[Path]) -> tuple[list[Path], list[Path]]:
    """(committed, orphaned) tokens files of a run directory, each sorted by name, given its
    live attempts files (`split_parts(attempts_dir)[0]`).

    A flush writes its tokens file before its attempts file (the attempt row is the commit
    record), so a driver killed between the two leaves a tokens file whose attempts exist only
    in its write-ahead log; the next session replays that log into a `-recovered` pair. The
    orphan must then not be read, or those per-token rows would count twice. A tokens file is
    committed when a live attempts file has its name, or a merged attempts file of its session
    covers its flush (tokens files are never merged)."""
    tokens = sorted(tokens_dir.glob("part-*.parquet")) if tokens_dir.exists() else []
    names = {p.name for p in live_attempts}
    merged = _merged_ranges(live_attempts)
    committed, orphaned = [], []
    for f in tokens:
        s = span(f.name)
        ok = f.name in names or (s is not None and any(a <= s[1] <= b for a, b, _ in merged.get(s[0], ())))
        (committed if ok else orphaned).append(f)
    return committed, orphaned
