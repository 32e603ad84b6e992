"""Busy-host detection (workers/host_load.py) around real speed cells: a busy loop on every CPU
beside a cell flags it host-busy; the same cell on an idle host is not flagged."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from kvsweep import records
from kvsweep.cells import Cell
from kvsweep.hashing import file_sha256
from kvsweep.workers import host_load
from kvsweep.workers.speed import DepthStateCache, run_speed_cell

LIMIT = host_load.DEFAULT_LIMIT
N_CPU = os.cpu_count() or 1


def cell(tiny_model) -> Cell:
    return Cell(kind="tg", model_name="tiny", model_path=str(tiny_model), model_sha256=file_sha256(tiny_model),
                type_k="f16", type_v="f16", n_gen=64, repetitions=3, n_batch=64, n_ubatch=64, host_class="x")


def background_cores(seconds: float = 1.0) -> float:
    """CPU other processes use while this one sleeps."""
    meter = host_load.Meter()
    meter.start()
    time.sleep(seconds)
    meter.stop()
    other = meter.read().other_cores
    return 0.0 if other is None else other


def idle_throughout(run):
    """run() on a host that looks idle before and after it, and whether it stayed so: other
    work that comes and goes (a benchmark's phases) must not pass for an idle host."""
    before = background_cores()
    out = run()
    return out, max(before, background_cores()) <= 0.1


def cpu_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return sum(int(v) for v in f.read().rsplit(")", 1)[1].split()[11:13])


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux's /proc")
def test_a_busy_loop_beside_a_speed_cell_flags_it(model, tiny_model):
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(N_CPU)]
    try:
        # wait until every loop is running (has used CPU), however fast or slow the host is
        while not all(cpu_time(p.pid) > 0 for p in loops):
            time.sleep(0.05)
        out = run_speed_cell(model, cell(tiny_model), N_CPU, DepthStateCache(), busy_limit=LIMIT)
    finally:
        for p in loops:
            p.kill()
            p.wait()
    assert out.status == records.OK
    assert host_load.HOST_BUSY in out.flags, out.facts
    assert out.facts["host_load_window_s"] > 0
    if out.facts["host_cpu_pressure"] is not None:
        assert out.facts["host_cpu_pressure"] > LIMIT
    # the flag is only raised when asked for
    calm = run_speed_cell(model, cell(tiny_model), N_CPU, DepthStateCache(), busy_limit=None)
    assert host_load.HOST_BUSY not in calm.flags


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux's /proc")
def test_an_idle_host_is_not_flagged(model, tiny_model):
    out, idle = idle_throughout(lambda: run_speed_cell(model, cell(tiny_model), N_CPU, DepthStateCache(),
                                                       busy_limit=LIMIT))
    other = out.facts["host_other_cores"]
    if not idle or (other is not None and other > 0.3):
        pytest.skip("this host is busy with other work: the idle case cannot be seen here")
    assert out.status == records.OK and host_load.HOST_BUSY not in out.flags, out.facts
    for key in ("host_load_window_s", "host_cpu_pressure", "host_other_cores", "host_steal_cores"):
        assert key in out.facts


def test_the_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(host_load.LIMIT_ENV, "off")
    assert host_load.busy_limit() is None
    monkeypatch.setenv(host_load.LIMIT_ENV, "0.25")
    assert host_load.busy_limit() == 0.25
    monkeypatch.delenv(host_load.LIMIT_ENV)
    assert host_load.busy_limit() == host_load.DEFAULT_LIMIT
    load = host_load.HostLoad(1.0, 0.05, 3.0, 0.0)  # pressure decides where the kernel has it
    assert not load.busy(0.10) and load.busy(0.01)
    ticks_only = host_load.HostLoad(1.0, None, 1.0, 0.0)
    assert ticks_only.busy(0.10, n_cpus=2) and not host_load.HostLoad(0.1, None, 1.0, 0.0).busy(0.10, 2)


BUSY_MATRIX = """
    name = "busy"
    [[models]]
    name = "tiny"
    generate = { arch = "llama", seed = 0 }
    [cache]
    symmetric = ["f16", "q8_0"]
    [speed]
    depths = [0]
    n_prompt = 32
    n_gen = 16
    repetitions = 3
    [testing]
    # q8_0's cells are timed beside a busy loop on every CPU, the first time they run
    faults = [{ match = { type_k = "q8_0" }, fault = "busy", times = 1 }]
"""


@pytest.fixture(scope="module")
def detection_on():
    """The workers of this module's cluster flag busy hosts (the suite turns it off elsewhere)."""
    old = os.environ.get(host_load.LIMIT_ENV)
    os.environ[host_load.LIMIT_ENV] = str(LIMIT)
    yield
    os.environ[host_load.LIMIT_ENV] = old if old is not None else "off"


@pytest.mark.ray
@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux's /proc")
def test_busy_cells_are_left_out_reported_and_measured_again(detection_on, ray_local, tmp_path):
    from conftest import write_matrix
    from kvsweep.analysis.db import connect
    from kvsweep.orchestrator.sweep import RunOptions, run_sweep

    path = write_matrix(tmp_path / "busy.toml", BUSY_MATRIX)
    first = run_sweep(path, RunOptions(run_dir=tmp_path / "run", progress=False))
    con = connect(first.run_dir)
    flagged = {r[0]: r[1] for r in con.execute(
        "SELECT cell_id, config FROM results WHERE list_contains(flags, 'host-busy')").fetchall()}
    # both q8_0 cells ran beside the loops (f16's too, if this host was busy anyway)
    assert list(flagged.values()).count("q8_0") == 2
    assert con.execute("SELECT count(*) FROM untrusted WHERE list_contains(flags, 'host-busy')").fetchone()[0] \
        == len(flagged)
    assert "host-busy" in (first.run_dir / "report" / "report.md").read_text()
    pressure = con.execute("SELECT min(host_cpu_pressure) FROM results WHERE config = 'q8_0'").fetchone()[0]
    assert pressure is None or pressure > LIMIT

    again = run_sweep(path, RunOptions(run_dir=first.run_dir, redo="busy", progress=False, report=False))
    assert again.to_run == len(flagged)  # exactly the flagged cells, measured again
    con = connect(first.run_dir)
    counted = dict(con.execute("SELECT cell_id, attempt FROM results").fetchall())
    assert all(counted[c] == 2 for c in flagged)  # the new measurement counts
