"""How numbers read in reports: depths as 4K, bytes as MiB/GiB, KL with enough digits."""

from __future__ import annotations

import math

# Short labels for statuses in tables; OOM stands out the way the seeds' tables mark it.
STATUS_LABELS = {
    "oom": "OOM",
    "predicted-oom": "OOM (predicted)",
    "skipped": "skipped",
    "crash": "crash",
    "timeout": "timeout",
    "error": "error",
    "invalid": "invalid",
    "missing": "not run",
}


def fmt_depth(depth: int | None) -> str:
    if depth is None:
        return "-"
    if depth >= 1024 and depth % 1024 == 0:
        return f"{depth // 1024}K"
    return str(depth)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def fmt_kl(x: float | None) -> str:
    """KL divergences span orders of magnitude: 4 decimals like the seeds, or 2 significant
    digits below 0.001 (so 3e-05 does not read as 0.0000)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x == 0:
        return "0"
    if abs(x) < 0.001:
        return f"{x:.1e}"
    return f"{x:.4f}"


def fmt_pm(value: float | None, unc: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if unc is None or (isinstance(unc, float) and math.isnan(unc)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {unc:.{digits}f}"


def fmt_kl_pm(value: float | None, unc: float | None) -> str:
    if value is None:
        return "-"
    if unc is None or value == 0:
        return fmt_kl(value)
    return f"{fmt_kl(value)} ± {fmt_kl(unc)}"


def fmt_status(status: str) -> str:
    return STATUS_LABELS.get(status, status)


def fmt_budget(name: str, max_kld: float | None) -> str:
    return f"{name} (no KL limit)" if max_kld is None else f"{name} (mean KL ≤ {max_kld:g})"


def join_names(names: list[str]) -> str:
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]
