"""A Vulkan worker on Mesa's lavapipe (a real Vulkan 1.3 device that computes on the CPU): built
by scripts/build_vulkan_worker.sh, which the README's test command runs; skipped, saying so,
when that environment is not there.

Checks: the probe reports the Vulkan device and that it is CPU-type, and honours
GGML_VK_VISIBLE_DEVICES (llama.cpp skips CPU-type devices otherwise); the K/V capability check
runs for real on Vulkan and finds the pairs that fall back to the CPU; a fleet of a CPU node and
the Vulkan node (real Ray, loopback) runs each quality cell on both backends, flags the Vulkan
node's speed cells as not a GPU's, and the report compares the backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEMO_CORPUS, ROOT
from kvsweep.analysis.db import connect

pytestmark = [pytest.mark.ray, pytest.mark.slow]

VENV = Path(os.environ.get("KVSWEEP_VULKAN_VENV") or
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kvsweep" / "worker-builds"
            / "venvs" / f"vulkan-py{sys.version_info.major}{sys.version_info.minor}")
LAVAPIPE = {"GGML_VK_VISIBLE_DEVICES": "0"}


@pytest.fixture(scope="module")
def vulkan_venv() -> Path:
    if not (VENV / "bin" / "python").exists():
        pytest.skip(f"no Vulkan worker at {VENV}: `bash scripts/build_vulkan_worker.sh` builds it "
                    "(the README's test command runs it)")
    return VENV


def run_in(venv: Path, code: str, env: dict | None = None, timeout=900) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "GGML_VK_VISIBLE_DEVICES"}
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          timeout=timeout, env={**environ, **(env or {})})


PROBE = ("import json; from kvsweep.workers.probe import probe_host; p = probe_host(); "
         "print(json.dumps({'backend': p.primary_backend, 'backends': p.backends, 'build': p.build_name, "
         "'gpus': [d.__dict__ for d in p.gpu_devices], 'vulkan': p.vulkan_devices, "
         "'class': p.default_host_class()}))")


def test_the_probe_reports_lavapipe_as_a_cpu_type_vulkan_device(vulkan_venv):
    out = run_in(vulkan_venv, PROBE, LAVAPIPE)
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout.strip().splitlines()[-1])
    assert p["backend"] == "Vulkan" and p["build"] == "vulkan"
    (gpu,) = p["gpus"]
    assert gpu["name"] == "Vulkan0" and gpu["description"].startswith("llvmpipe")
    assert gpu["device_type"] == "cpu" and "Mesa" in gpu["driver"] and gpu["memory_total"] > 0
    assert p["class"].startswith("vulkan-llvmpipe")
    # without the variable llama.cpp skips the CPU-type device; the loader still lists it
    hidden = json.loads(run_in(vulkan_venv, PROBE).stdout.strip().splitlines()[-1])
    assert hidden["backend"] == "CPU" and hidden["gpus"] == []
    assert hidden["vulkan"][0]["device_type"] == "cpu"
    from kvsweep.orchestrator.fleet_cli import device_notes

    (note,) = device_notes({"devices": [], "vulkan_devices": hidden["vulkan"]})
    assert "GGML_VK_VISIBLE_DEVICES=0" in note


def test_the_capability_check_runs_on_vulkan_and_finds_the_fallbacks(vulkan_venv, tmp_path):
    """ggml-vulkan has no flash-attention path for bf16 with another type (its supports_op:
    `(K is BF16) != (V is BF16)`), so ggml runs that attention on the CPU: more graph splits than
    f16/f16, the `fallback` verdict."""
    code = ("import json; from kvsweep.workers.capabilities import run_check; "
            "print(json.dumps(run_check('Vulkan', ['f16', 'q8_0', 'bf16'])))")
    out = run_in(vulkan_venv, code, {**LAVAPIPE, "KVSWEEP_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["cache_types"] == ["f16", "q8_0", "bf16"]
    fallback = {p for p, e in report["pairs"].items() if e["fallback"]}
    assert fallback == {"f16/bf16", "bf16/f16", "q8_0/bf16", "bf16/q8_0"}
    assert all(e["ok"] for e in report["pairs"].values())


CROSS = """
name = "cross"
[[models]]
generate = {{ arch = "llama" }}
[cache]
symmetric = ["f16", "q8_0"]
pairs = [["q8_0", "bf16"]]
[quality]
corpus = "{corpus}"
n_ctx = [128]
max_chunks = 3
baseline = "f16"
n_batch = 128
[speed]
depths = [0]
n_prompt = 16
n_gen = 4
repetitions = 2
[placement]
quality_on = "every-backend"
"""


def test_quality_on_every_backend_of_a_cpu_and_a_vulkan_node(vulkan_venv, tmp_path):
    from test_fleet_cli import stop_cluster

    def kvsweep(*args, env=None, python=sys.executable, timeout=900):
        environ = {k: v for k, v in os.environ.items() if k != "GGML_VK_VISIBLE_DEVICES"}
        return subprocess.run([str(python), "-m", "kvsweep", *map(str, args)], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, env={**environ, **(env or {})})

    head = kvsweep("head", "--ip", "127.0.0.2", "--with-worker", "--host-class", "cpu-box", timeout=300)
    try:
        assert head.returncode == 0, head.stdout + head.stderr
        joined = kvsweep("worker", "join", "--address", "127.0.0.2:6379", "--ip", "127.0.0.3",
                         "--host-class", "lavapipe-box", "--port-offset", "100", "--skip-pair-check",
                         env=LAVAPIPE, python=vulkan_venv / "bin" / "python")
        assert joined.returncode == 0, joined.stdout + joined.stderr
        assert "CPU-type Vulkan device" in joined.stdout
        listed = kvsweep("workers", "--address", "127.0.0.2:6379")
        row = next(line for line in listed.stdout.splitlines() if "lavapipe-box" in line)
        assert "Vulkan" in row and "llvmpipe" in row and "[CPU-type]" in row
        matrix = tmp_path / "cross.toml"
        matrix.write_text(CROSS.format(corpus=DEMO_CORPUS))
        run = kvsweep("run", matrix, "--address", "127.0.0.2:6379", "--run-dir", tmp_path / "run", "--no-progress")
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        stop_cluster("127.0.0.2:6379")
    con = connect(tmp_path / "run")
    placed = con.execute("SELECT p.quality_backend, r.backend, r.config, r.status FROM plan p JOIN results r "
                         "USING (cell_id) WHERE p.kind = 'quality'").fetchall()
    assert {(b, c) for b, _, c, _ in placed} == {(b, c) for b in ("CPU", "Vulkan") for c in ("f16", "q8_0", "q8_0/bf16")}
    assert all(wanted == ran and status == "ok" for wanted, ran, _, status in placed)
    # speed cells of the Vulkan node are not a GPU's figures; the CPU node's carry no such flag
    flags = dict(con.execute("SELECT backend, list_distinct(flatten(list(flags))) FROM results "
                             "WHERE kind IN ('pp', 'tg') GROUP BY backend").fetchall())
    assert "cpu-type-device" in flags["Vulkan"] and "cpu-type-device" not in flags["CPU"]
    # q8_0-K / bf16-V has no Vulkan flash-attention path: its attention ran on the CPU, flagged
    bf16 = con.execute("SELECT backend, flags FROM results WHERE kind = 'quality' AND config = 'q8_0/bf16'").fetchall()
    assert dict(bf16)["Vulkan"] == ["cpu-fallback"] and dict(bf16)["CPU"] == []
    # the report compares the backends: q8_0's PPL on both, the paired difference
    cross = con.execute("SELECT config, ppl_a, ppl_b, n_tokens FROM cross_backend ORDER BY config").fetchall()
    assert [c for c, *_ in cross] == ["f16", "q8_0", "q8_0/bf16"] and all(n == 3 * 63 for *_, n in cross)
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "## Quality across backends" in report and "| PPL on CPU | PPL on Vulkan |" in report
    q8 = next(r for r in cross if r[0] == "q8_0")
    assert f"| q8_0 | {q8[1]:.4f} | {q8[2]:.4f} |" in report
