"""`kvsweep status RUN_DIR`: counts by status, host and model, and what is left.

It reads only the Parquet files already renamed into place, so it works while a sweep runs.
"""

from __future__ import annotations

from pathlib import Path

from kvsweep.analysis.db import with_damage_retry


def status_tables(run_dir: str | Path) -> dict[str, list[tuple]]:
    return with_damage_retry(run_dir, _tables)


def _tables(con) -> dict[str, list[tuple]]:
    return {
        "by status": con.execute(
            "SELECT status, count(*) FROM cell_status GROUP BY ALL ORDER BY 2 DESC").fetchall(),
        "by host": con.execute(
            "SELECT coalesce(host, '(not run)'), status, count(*) FROM cell_status "
            "GROUP BY ALL ORDER BY 1, 3 DESC").fetchall(),
        "by model": con.execute(
            "SELECT model_name, kind, status, count(*) FROM cell_status GROUP BY ALL ORDER BY 1, 2, 4 DESC").fetchall(),
        "left": con.execute(
            "SELECT kind, model_name, count(*) FROM cell_status WHERE status <> 'ok' "
            "AND status NOT IN ('skipped') GROUP BY ALL ORDER BY 1, 2").fetchall(),
        "attempts": con.execute("SELECT count(*) FROM attempts").fetchall(),
    }


def print_status(run_dir: str | Path) -> None:
    t = status_tables(run_dir)
    total = sum(n for _, n in t["by status"])
    print(f"{run_dir}: {total} planned cells, {t['attempts'][0][0]} attempts recorded")
    print("\nby status:")
    for status, n in t["by status"]:
        print(f"  {status:<14} {n:>7}")
    print("\nby host:")
    for host, status, n in t["by host"]:
        print(f"  {host:<24} {status:<14} {n:>7}")
    print("\nby model:")
    for model, kind, status, n in t["by model"]:
        print(f"  {model:<24} {kind:<8} {status:<14} {n:>7}")
    left = t["left"]
    print("\nleft to do (not ok, not skipped):" + ("" if left else " nothing"))
    for kind, model, n in left:
        print(f"  {model:<24} {kind:<8} {n:>7}")
    loads = model_loads(run_dir)
    if loads:
        print("\nmodel loads per worker, last finished session (grouping by model keeps this low):")
        for worker, n in sorted(loads.items()):
            print(f"  {worker:<24} {n:>7}")


def model_loads(run_dir: str | Path) -> dict[str, int]:
    """Model loads per worker of the latest session that recorded them (manifest.json)."""
    import json

    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    for session in reversed(manifest.get("sessions", [])):
        if session.get("model_loads"):
            return session["model_loads"]
    return {}
