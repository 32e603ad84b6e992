"""A worker on the TurboQuant fork of llama.cpp: built by scripts/build_worker.py from the fork's
source (../shared/turboquant, or $KVSWEEP_TURBOQUANT_SRC: a clone or an archive), sweeping
turbo2/3/4 through a real local Ray, its knobs caught, and a mixed fleet of a mainline node and
a fork node.

The build takes about 5 minutes on 2 cores the first time (the wheel is cached under
~/.cache/kvsweep/worker-builds, so later runs on one machine take seconds). Without the fork's
source the tests are skipped, saying so."""

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

FORK_SOURCE = Path(os.environ.get("KVSWEEP_TURBOQUANT_SRC") or
                   ROOT.parent / "shared" / "turboquant" / "llama-cpp-turboquant-69d8e4b.tar.xz")


@pytest.fixture(scope="module")
def fork_venv() -> Path:
    if not FORK_SOURCE.exists():
        pytest.skip(f"no TurboQuant source at {FORK_SOURCE} (set KVSWEEP_TURBOQUANT_SRC): the fork "
                    "worker is not tested")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kvsweep" / "worker-builds"
    venv = base / "venvs" / f"turboquant-py{sys.version_info.major}{sys.version_info.minor}"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_worker.py"), "--venv", str(venv),
                           "--llama-cpp", str(FORK_SOURCE), "--bindings", "0.3.21", "--name", "turboquant",
                           "--system-site-packages"], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-5000:]
    return venv


def in_venv(venv: Path, *args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "kvsweep", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def rows(con, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def test_the_fork_build_describes_itself(fork_venv):
    code = ("import json; from kvsweep.workers.probe import probe_host; "
            "from kvsweep.workers.ggml_types import build_types; "
            "from kvsweep.workers.capabilities import host_capabilities; p = probe_host(); t = build_types(); "
            "print(json.dumps({'name': p.build_name, 'commit': p.build_commit, 'bindings': p.llama_cpp_python_version, "
            "'ids': {n: t[n].id for n in ('q8_0', 'turbo2', 'turbo3', 'turbo4')}, "
            "'bits': {n: t[n].bits_per_value for n in ('turbo2', 'turbo3', 'turbo4')}, "
            "'kv': host_capabilities()['cache_types']}))")
    out = subprocess.run([str(fork_venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["name"] == "turboquant" and info["commit"] == "69d8e4b"
    assert info["bindings"].startswith("0.3.21+turboquant")
    # the fork's numbers, read from its build (mainline's 42 is q2_0)
    assert info["ids"] == {"q8_0": 8, "turbo2": 42, "turbo3": 43, "turbo4": 44}
    assert info["bits"] == {"turbo2": 2.125, "turbo3": 3.125, "turbo4": 4.25}
    assert {"f16", "q8_0", "q4_0", "turbo2", "turbo3", "turbo4"} <= set(info["kv"])


TURBO = """
name = "turbo"
[[models]]
generate = {{ arch = "llama" }}
[cache]
symmetric = ["q8_0", "turbo4", "turbo3", "turbo2"]
pairs = [["q8_0", "turbo4"]]
[quality]
corpus = "{corpus}"
n_ctx = [256]
max_chunks = 6
baseline = "f16"
n_batch = 256
[speed]
depths = [0, 256]
n_prompt = 32
n_gen = 8
repetitions = 2
"""


@pytest.fixture(scope="module")
def turbo_run(fork_venv, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("turbo")
    matrix = tmp / "turbo.toml"
    matrix.write_text(TURBO.format(corpus=DEMO_CORPUS))
    out = in_venv(fork_venv, "run", matrix, "--run-dir", tmp / "run", "--no-progress")
    assert out.returncode == 0, out.stdout + out.stderr
    return tmp / "run"


def test_a_turbo_sweep_runs_every_cell_and_ranks_the_caches(turbo_run):
    con = connect(turbo_run)
    assert rows(con, "SELECT status, count(*) FROM cell_status GROUP BY 1") == [("ok", 26)]
    kl = dict(rows(con, "SELECT config, kld_mean FROM quality WHERE config <> 'f16'"))
    # more bits, less divergence: q8_0 < q8_0-K/turbo4-V < turbo4 < turbo3 < turbo2
    assert kl["q8_0"] < kl["q8_0/turbo4"] < kl["turbo4"] < kl["turbo3"] < kl["turbo2"]


def test_every_context_was_made_with_the_cells_types(turbo_run):
    con = connect(turbo_run)
    made = rows(con, "SELECT type_k, type_v, kv_type_k, kv_type_v, flags, config_check FROM results")
    assert len(made) == 26
    for type_k, type_v, kv_k, kv_v, flags, check in made:
        assert (kv_k, kv_v) == (type_k, type_v) and flags == [] and check == ""
    # provenance: the fork, its commit, the knobs kvsweep pinned
    assert rows(con, "SELECT DISTINCT build_name, build_commit FROM attempts") == [("turboquant", "69d8e4b")]
    env = json.loads(rows(con, "SELECT DISTINCT env_effective FROM attempts")[0][0])
    assert env["TURBO_LAYER_ADAPTIVE"] == "0" and env["TURBO_AUTO_ASYMMETRIC"] == "0"


def test_the_report_has_the_posts_tables_with_turbo(turbo_run):
    report = (turbo_run / "report" / "report.md").read_text()
    quality = report[report.index("## Quality"):]
    for config in ("turbo2", "turbo3", "turbo4", "q8_0/turbo4"):
        assert f"| {config} |" in quality
    assert "| Cache | PPL | KL vs f16 | Top-1 token agreement |" in report
    depth_header = next(line for line in report.splitlines() if line.startswith("| Depth |"))
    for config in ("q8_0", "turbo2", "turbo3", "turbo4", "q8_0/turbo4"):
        assert f" {config} |" in depth_header
    assert "turboquant `69d8e4b`" in report and "scalar path" in report  # the build, the CPU caveat


KNOB = """
name = "knob"
[[models]]
generate = {{ arch = "llama", n_layer = 8 }}
[cache]
symmetric = ["turbo2", "q8_0"]
[quality]
corpus = "{corpus}"
n_ctx = [128]
max_chunks = 2
baseline = "f16"
n_batch = 128
[runtime]
env = {{ TURBO_LAYER_ADAPTIVE = "1" }}
"""


def test_a_knob_that_silently_changes_the_cache_is_caught(fork_venv, tmp_path):
    """TURBO_LAYER_ADAPTIVE=1 stores every layer of an 8-layer model's turbo cache as q8_0 and
    logs nothing about it per context: the KV sizes give it away."""
    matrix = tmp_path / "knob.toml"
    matrix.write_text(KNOB.format(corpus=DEMO_CORPUS))
    out = in_venv(fork_venv, "run", matrix, "--run-dir", tmp_path / "run", "--no-progress")
    con = connect(tmp_path / "run")
    flagged = dict(rows(con, "SELECT config, config_check FROM results WHERE list_contains(flags, 'config-not-applied')"))
    assert set(flagged) == {"turbo2"}, out.stdout + out.stderr  # q8_0 is no turbo: the mode leaves it
    assert "turbo2 needs" in flagged["turbo2"]
    # flagged cells never make a recommendation
    assert rows(con, "SELECT count(*) FROM untrusted WHERE config = 'turbo2'") == [(1,)]


MIXED = """
name = "mixed"
[[models]]
generate = {{ arch = "llama" }}
[cache]
symmetric = ["q8_0", "q4_0", "turbo3"]
pairs = [["q8_0", "turbo4"]]
[quality]
corpus = "{corpus}"
n_ctx = [128]
max_chunks = 4
baseline = "f16"
n_batch = 128
max_contexts = 1
[speed]
depths = [0]
n_prompt = 16
n_gen = 4
repetitions = 2
"""


def test_a_mixed_fleet_places_turbo_cells_on_the_fork_node(fork_venv, tmp_path):
    """`kvsweep head` (this environment: mainline) and `kvsweep worker join` from the fork's
    environment, both on loopback addresses of this host (Ray rewrites 127.0.0.1 itself, so
    127.0.0.2 and .3, the second node's ports shifted), then one sweep."""
    from test_fleet_cli import stop_cluster

    head = subprocess.run([sys.executable, "-m", "kvsweep", "head", "--ip", "127.0.0.2", "--with-worker",
                           "--host-class", "main-box"], capture_output=True, text=True, timeout=300)
    try:
        assert head.returncode == 0, head.stdout + head.stderr
        joined = in_venv(fork_venv, "worker", "join", "--address", "127.0.0.2:6379", "--ip", "127.0.0.3",
                         "--host-class", "tq-box", "--port-offset", "100")
        assert joined.returncode == 0, joined.stdout + joined.stderr
        assert "turboquant 69d8e4b" in joined.stdout
        listed = subprocess.run([sys.executable, "-m", "kvsweep", "workers", "--address", "127.0.0.2:6379"],
                                capture_output=True, text=True, timeout=300)
        lines = {line.split()[3]: line for line in listed.stdout.splitlines()[1:] if line.strip()}
        assert "mainline" in lines["main-box"] and "9 types" in lines["main-box"]
        assert "turboquant 69d8e4b" in lines["tq-box"] and "14 types" in lines["tq-box"]
        matrix = tmp_path / "mixed.toml"
        matrix.write_text(MIXED.format(corpus=DEMO_CORPUS))
        run = subprocess.run([sys.executable, "-m", "kvsweep", "run", matrix, "--address", "127.0.0.2:6379",
                              "--run-dir", tmp_path / "run", "--no-progress"], capture_output=True, text=True,
                             timeout=900)
        # turbo speed cells of the mainline host class have no build to run them: exit 1, recorded
        assert run.returncode == 1, run.stdout + run.stderr
        assert "4 unsupported, 17 ok" in run.stdout
        con = connect(tmp_path / "run")
        placed = rows(con, "SELECT r.type_k, r.type_v, r.status, r.build_name, p.host_class FROM plan p "
                           "JOIN results r USING (cell_id)")
        for type_k, type_v, status, build, host_class in placed:
            turbo = type_k.startswith("turbo") or type_v.startswith("turbo")
            if status == "unsupported":
                assert turbo and host_class == "main-box", (type_k, type_v, host_class)
                continue
            assert status == "ok"
            if turbo:
                assert build == "turboquant", (type_k, type_v, host_class)
            elif host_class:  # a speed cell runs on its host class's node
                assert build == {"main-box": "mainline", "tq-box": "turboquant"}[host_class]
        # mainline's quality cells may run on either node; every turbo one ran on the fork
        builds = rows(con, "SELECT DISTINCT build_name FROM results WHERE kind = 'quality' AND "
                           "(type_k LIKE 'turbo%' OR type_v LIKE 'turbo%')")
        assert builds == [("turboquant",)]
        status = subprocess.run([sys.executable, "-m", "kvsweep", "status", tmp_path / "run"],
                                capture_output=True, text=True, timeout=300)
        assert status.returncode == 0 and "unsupported" in status.stdout
    finally:
        stop_cluster("127.0.0.2:6379")
