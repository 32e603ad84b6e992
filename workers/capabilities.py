"""Which K/V cache types and pairs this llama.cpp build runs on this host's device, for real.

The candidates are the build's own types (workers/ggml_types.py) less the weight-only formats
(kvsweep/cache_types.WEIGHT_ONLY): mainline's nine, and whatever a fork adds (TurboQuant's
turbo2/3/4). Each candidate is first tried as a symmetric cache; the types that work are the
build's K/V cache types, and every pair of them is tried next. A try creates a context with
flash attention on a tiny generated model (head size 64, all layers offloaded) and decodes a
few tokens. Recorded per pair: ok or the error; llama.cpp's graph splits (a pair whose
flash-attention kernel is missing on a GPU backend falls back to the CPU, which shows as more
splits than f16/f16); and the flag `fallback` when that happens on a non-CPU backend.

The check runs in a child process: a pair that aborts inside llama.cpp (GGML_ASSERT) kills
only the child, which is restarted on the remaining pairs, and that pair is recorded as
`crash`. Results are cached per (llama.cpp build, backend, device) under
~/.cache/kvsweep/capabilities/, the build told by the sha256 of its libggml-base (a tree
without .git reports its commit as "unknown"), so a host pays for the check once per build.

    python -m kvsweep.workers.capabilities [--force]      prints the JSON
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from kvsweep import cache_types
from kvsweep.paths import cache_dir

_SPLITS = re.compile(r"graph splits = (\d+)|nodes = \d+, splits = (\d+)")


def cache_file(build: str, backend: str, device: str) -> Path:
    from kvsweep.workers.probe import slug

    return cache_dir() / "capabilities" / f"{slug(build)}-{slug(backend)}-{slug(device)}.json"


def graph_splits(lines: list[str]) -> int | None:
    """The largest graph-splits count llama.cpp logged (None if it logged none)."""
    found = [int(a or b) for line in lines for a, b in _SPLITS.findall(line)]
    return max(found) if found else None


def _check_pairs(pairs: list[tuple[str, str]], out_path: str) -> None:
    """Child process: check `pairs` in order, appending one JSON line per pair as it goes."""
    from kvsweep.workers.generated_models import ModelRecipe, cached_model
    from kvsweep.workers.llama_api import Context, ContextSettings, LlamaError, LogCapture, Model

    log = LogCapture.install()
    model = Model(str(cached_model(ModelRecipe())), n_gpu_layers=999)
    tokens = model.tokenize("the cache of the model " * 8)[:32]
    with open(out_path, "a") as out:
        for k, v in pairs:
            out.write(json.dumps({"pair": f"{k}/{v}", "started": True}) + "\n")
            out.flush()
            mark = log.mark()
            try:
                with Context(model, ContextSettings(k, v, 256, 64, 64, "on", 1)) as ctx:
                    ctx.decode(tokens, 0)
                    ctx.decode_one(int(tokens[1]), len(tokens))
                result = {"ok": True}
            except LlamaError as exc:
                result = {"ok": False, "error": str(exc).splitlines()[0]}
            result.update(pair=f"{k}/{v}", splits=graph_splits(log.since(mark)))
            out.write(json.dumps(result) + "\n")
            out.flush()


def candidate_types() -> list[str]:
    """This build's types that may be K/V caches: the catalogue's first (in its order), then a
    fork's additions (by enum number)."""
    from kvsweep.workers.ggml_types import build_types

    types = build_types()
    known = [n for n in cache_types.CATALOGUE if n in types]
    extra = sorted((t for n, t in types.items() if n not in cache_types.CATALOGUE
                    and n not in cache_types.WEIGHT_ONLY), key=lambda t: t.id)
    return known + [t.name for t in extra]


def _check(pairs: list[tuple[str, str]], results: dict[str, dict], path: str) -> None:
    """Check `pairs` in child processes, surviving pairs that crash; results by "k/v"."""
    while any(f"{k}/{v}" not in results for k, v in pairs):
        todo = [p for p in pairs if f"{p[0]}/{p[1]}" not in results]
        code = ("import sys, json; from kvsweep.workers.capabilities import _check_pairs; "
                "_check_pairs([tuple(p) for p in json.loads(sys.argv[1])], sys.argv[2])")
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(todo), path],
                              capture_output=True, text=True)
        started = None
        for line in Path(path).read_text().splitlines():
            entry = json.loads(line)
            if entry.get("started"):
                started = entry["pair"]
            else:
                results[entry["pair"]] = entry
                started = None
        if proc.returncode != 0:
            if started is None:  # died before any pair: nothing to blame, stop here
                raise RuntimeError(f"the capability check failed to start: {proc.stderr[-2000:]}")
            last = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            results[started] = {"pair": started, "ok": False, "crash": True, "error": last[0]}
        Path(path).write_text("")


def run_check(backend: str, types: list[str] | None = None) -> dict:
    """Which of `types` (default: this build's candidates) work as K/V caches, alone and in
    pairs; returns the report."""
    types = candidate_types() if types is None else list(types)
    results: dict[str, dict] = {}
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    try:
        _check([(t, t) for t in types], results, path)
        accepted = [t for t in types if results[f"{t}/{t}"].get("ok")]
        _check([(k, v) for k in accepted for v in accepted if k != v], results, path)
    finally:
        Path(path).unlink(missing_ok=True)
    base = results.get("f16/f16", {}).get("splits")
    for entry in results.values():
        entry["fallback"] = bool(
            backend not in ("", "CPU") and entry.get("ok") and base is not None
            and entry.get("splits") is not None and entry["splits"] > base
        )
    rejected = {t: results[f"{t}/{t}"].get("error", "") for t in types if t not in accepted}
    from kvsweep.workers.ggml_types import build_types

    known = build_types()
    storage = {t: {"block_size": known[t].block_size, "type_size": known[t].type_size}
               for t in accepted if t in known}
    return {"backend": backend, "cache_types": accepted, "rejected": rejected, "pairs": results,
            "storage": storage}


def supported_pairs(report: dict) -> set[str]:
    """The "k/v" pairs a capability report says run."""
    return {p for p, e in report.get("pairs", {}).items() if e.get("ok")}


def host_capabilities(force: bool = False) -> dict:
    """The cached report for this host's build and device, checking once when missing."""
    from kvsweep.workers.probe import probe_host

    probe = probe_host()
    device = probe.gpu_devices[0].description if probe.gpu_devices else probe.cpu_info
    path = cache_file(probe.build_fingerprint, probe.primary_backend, device)
    if path.exists() and not force:
        return json.loads(path.read_text())
    report = run_check(probe.primary_backend)
    report.update(build_commit=probe.build_commit, build_name=probe.build_name,
                  build_fingerprint=probe.build_fingerprint, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # several workers of one host may check at once
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True))
    tmp.replace(path)
    return report


def summary(report: dict) -> str:
    """One line for tables: '81/81 ok' plus what failed or fell back."""
    pairs = report.get("pairs", {})
    ok = [p for p, e in pairs.items() if e.get("ok")]
    bad = sorted(p for p, e in pairs.items() if not e.get("ok"))
    fallback = sorted(p for p, e in pairs.items() if e.get("fallback"))
    types = report.get("cache_types")
    text = (f"{len(types)} types, " if types is not None else "") + f"{len(ok)}/{len(pairs)} pairs ok"
    if bad:
        text += "; fail: " + " ".join(bad[:6]) + (" ..." if len(bad) > 6 else "")
    if fallback:
        text += "; CPU fallback: " + " ".join(fallback[:6]) + (" ..." if len(fallback) > 6 else "")
    return text


if __name__ == "__main__":
    print(json.dumps(host_capabilities(force="--force" in sys.argv), indent=1, sort_keys=True))
