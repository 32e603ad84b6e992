"""`kvsweep status RUN_DIR`: counts by status, host and model, and what is left.

It reads only the Parquet files already renamed into place, so it works while a sweep runs.
"""

from __future__ import annotations

from pathlib import Path

from kvsweep.analysis.db import query, with_damage_retry
from kvsweep.terminal import print_table


def status_tables(run_dir: str | Path) -> dict[str, list[tuple]]:
    return with_damage_retry(run_dir, _tables)


def _tables(con) -> dict[str, list[tuple]]:
    # analysis/sql/status_*.sql; rows as tuples, in the queries' column order
    return {key: [tuple(r.values()) for r in query(con, f"status_{name}")]
            for key, name in (("by status", "by_status"), ("by host", "by_host"), ("by model", "by_model"),
                              ("left", "left"), ("attempts", "attempts"))}


def print_status(run_dir: str | Path) -> None:
    t = status_tables(run_dir)
    total = sum(n for _, n in t["by status"])
    print(f"{run_dir}: {total} planned cells, {t['attempts'][0][0]} attempts recorded")
    print("\nby status:")
    print_table(["status", "cells"], t["by status"], numeric=[1])
    print("\nby host:")
    print_table(["host", "status", "cells"], t["by host"], numeric=[2])
    print("\nby model:")
    print_table(["model", "kind", "status", "cells"], t["by model"], numeric=[3])
    left = t["left"]
    print("\nleft to do (not ok, not skipped):" + ("" if left else " nothing"))
    if left:
        print_table(["model", "kind", "cells"], [(m, k, n) for k, m, n in left], numeric=[2])
    loads = model_loads(run_dir)
    if loads:
        print("\nmodel loads per worker, last finished session (grouping by model keeps this low):")
        print_table(["worker", "loads"], sorted(loads.items()), numeric=[1])


def model_loads(run_dir: str | Path) -> dict[str, int]:
    """Model loads per worker of the latest session that recorded them (manifest.json)."""
    import json

    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    for session in reversed(manifest.get("sessions", [])):
        if session.get("model_loads"):
            return session["model_loads"]
    return {}
