"""Which Parquet files under a run directory's results/ count, with damaged ones set aside.

Every reader (DuckDB views, resume, the log replay) lists the results through `result_files`,
so they agree on what a run directory holds:

- attempts files that are live (kvsweep/parts.py: a merged file replaces what it covers);
- tokens files committed by such an attempts file (a tokens file a killed driver left without
  its attempts file is an orphan: its rows come back from the write-ahead log);
- files that cannot be read as kvsweep results (truncated by a full disk or a partial copy, a
  bad sector, a foreign file under a kvsweep name) are moved to results/quarantine/ with a
  warning naming them, so one damaged file never makes a run directory unusable. The cells
  whose only results were in such a file are missing again, and the next resume runs exactly
  those. A tokens file whose attempts file went to quarantine follows it there (nothing read
  from it would count); a quality attempt whose per-token rows went to quarantine no longer
  counts either (`lost_tokens`): its cell runs again.

A file is checked by its Parquet footer and its columns (cheap: the footer only). Damage
inside a file whose footer is intact shows when a query reads it: `quarantine_named` moves a
file an error message names, and the readers retry (analysis/db.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from kvsweep.parts import split_parts, split_tokens_parts, span

QUARANTINE = "quarantine"
# columns without which a file is not a kvsweep results file
_REQUIRED = {"attempts": {"cell_id", "attempt_id", "status", "kind"},
             "tokens": {"cell_id", "attempt_id", "chunk", "nll"}}


@dataclass
class ResultFiles:
    attempts: list[Path] = field(default_factory=list)  # live, readable
    tokens: list[Path] = field(default_factory=list)  # committed, readable
    superseded: list[Path] = field(default_factory=list)  # attempts files a merged file replaces
    orphaned: list[Path] = field(default_factory=list)  # tokens files without attempts (a kill)
    quarantined: list[Path] = field(default_factory=list)  # moved aside by this call
    lost_tokens: set[str] = field(default_factory=set)  # ok quality attempts without token rows


def problem_with(path: Path, kind: str) -> str:
    """Why `path` cannot be read as a kvsweep `kind` file ('' when it can)."""
    import pyarrow.parquet as pq

    try:
        names = set(pq.ParquetFile(path).schema_arrow.names)
    except Exception as exc:  # ArrowInvalid, OSError: truncated, not Parquet at all
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
    missing = _REQUIRED[kind] - names
    if missing:
        return f"not a kvsweep {kind} file: it lacks the columns {', '.join(sorted(missing))}"
    return ""


def quarantine(path: Path, reason: str) -> Path:
    """Move a results file to results/quarantine/<attempts|tokens>/, warning with its name."""
    folder = path.parent.parent / QUARANTINE / path.parent.name
    folder.mkdir(parents=True, exist_ok=True)
    dest, n = folder / path.name, 1
    while dest.exists():
        dest, n = folder / f"{path.name}.{n}", n + 1
    path.replace(dest)
    logger.warning(f"{path} cannot be read ({reason}); moved to {dest}. The cells whose only "
                   "results were in it are missing again: `kvsweep resume` runs exactly those")
    return dest


def _quarantined_attempts(results: Path) -> list[str]:
    folder = results / QUARANTINE / "attempts"
    return [p.name for p in folder.iterdir()] if folder.exists() else []


def _covered_by(name: str, quarantined: list[str]) -> bool:
    """Whether a tokens file's attempts went to quarantine (same flush, or a merged range)."""
    s = span(name)
    for q in quarantined:
        base = re.sub(r"\.\d+$", "", q)  # a second file of the same name got a suffix
        if base == name:
            return True
        qs = span(base)
        if s is not None and qs is not None and qs[3] and qs[0] == s[0] and qs[1] <= s[1] <= qs[2]:
            return True
    return False


def result_files(results: Path) -> ResultFiles:
    """The results files of a run directory's results/ folder that count (see the module)."""
    out = ResultFiles()
    attempts_dir, tokens_dir = results / "attempts", results / "tokens"
    for folder, kind in ((attempts_dir, "attempts"), (tokens_dir, "tokens")):
        if folder.exists():
            for path in sorted(folder.glob("part-*.parquet")):
                reason = problem_with(path, kind)
                if reason:
                    quarantine(path, reason)
                    out.quarantined.append(path)
    out.attempts, out.superseded = split_parts(attempts_dir)
    out.tokens, orphaned = split_tokens_parts(tokens_dir, out.attempts)
    gone = _quarantined_attempts(results)
    for path in orphaned:
        if gone and _covered_by(path.name, gone):
            quarantine(path, "its attempts file is in quarantine")
            out.quarantined.append(path)
        else:
            out.orphaned.append(path)
    if (results / QUARANTINE / "tokens").exists():
        out.lost_tokens = _attempts_without_tokens(out.attempts, out.tokens)
    return out


def _attempts_without_tokens(attempts: list[Path], tokens: list[Path]) -> set[str]:
    """Ok quality attempts that recorded per-token rows none of the readable files hold."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    if not attempts:
        return set()
    table = ds.dataset([str(p) for p in attempts], format="parquet").to_table(
        columns=["attempt_id", "kind", "status", "n_tokens"])
    wanted = table.filter(pc.and_(pc.and_(pc.equal(table["kind"], "quality"), pc.equal(table["status"], "ok")),
                                  pc.greater(pc.fill_null(table["n_tokens"], 0), 0)))
    ids = set(wanted.column("attempt_id").to_pylist())
    if ids and tokens:
        have = ds.dataset([str(p) for p in tokens], format="parquet").to_table(columns=["attempt_id"])
        ids -= set(pc.unique(have.column(0)).to_pylist())
    return ids


_PATH_IN_MESSAGE = re.compile(r"(/[^\s'\"]+?\.parquet)")


def quarantine_named(results: Path, message: str) -> Path | None:
    """Move the results file an error message names (damage past the footer), if any."""
    for found in _PATH_IN_MESSAGE.findall(message):
        path = Path(found)
        if path.exists() and path.parent.parent == results and path.parent.name in ("attempts", "tokens"):
            first = message.strip().splitlines()[0] if message.strip() else "unreadable"
            quarantine(path, first[:300])
            return path
    return None
