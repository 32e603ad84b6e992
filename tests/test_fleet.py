"""A heterogeneous fleet on one machine: ray.cluster_utils.Cluster with nodes that advertise
different host classes, backends and memory (kvsweep's node labels), a real Ray scheduler and
real llama.cpp workers. The compute is this machine's CPU on every node: the labels are what
is being tested (placement, the memory planner, the OOM ladder, losing a node)."""

from __future__ import annotations

import threading
from pathlib import Path
import time

import pytest

from conftest import DEMO_CORPUS
from kvsweep.analysis.db import connect
from kvsweep.orchestrator.fleet import LABEL_BACKEND, LABEL_HOST_CLASS, LABEL_MEMORY, WORKER_RESOURCE
from kvsweep.orchestrator.sweep import RunOptions, run_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow]
GiB = 2**30


def node_args(host_class: str, backend: str, memory: int) -> dict:
    return dict(num_cpus=1, resources={WORKER_RESOURCE: 1},
                labels={LABEL_HOST_CLASS: host_class, LABEL_BACKEND: backend, LABEL_MEMORY: str(memory)})


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = {
        "small": c.add_node(**node_args("gpu-a", "CUDA", 8 * GiB)),
        "big": c.add_node(**node_args("gpu-a", "CUDA", 16 * GiB)),
        "mac": c.add_node(**node_args("mac-b", "Metal", 64 * GiB)),
        "tiny": c.add_node(**node_args("tiny-box", "CPU", 4 * 2**20)),  # 4 MiB: nothing fits
    }
    c.wait_for_nodes()
    yield c, nodes
    c.shutdown()


MATRIX = """
name = "fleet"
[[models]]
name = "tiny"
generate = {{ arch = "llama" }}
[cache]
symmetric = ["f16", "q8_0", "q4_0"]
[quality]
corpus = "{corpus}"
n_ctx = [128]
max_chunks = 2
baseline = "f16"
n_batch = 128
[speed]
depths = [0, 256, 512]
n_prompt = 16
n_gen = 4
repetitions = 1
[runtime]
n_threads = 1
cell_timeout_s = 120
[retry]
oom_retries = 0
[placement]
quality_on = "{quality_on}"
[testing]
faults = [
  # q8_0 tg at 256 needs 12 GiB: out of memory on the 8 GiB node, fits on the 16 GiB one
  {{ match = {{ type_k = "q8_0", kind = "tg", n_depth = 256 }}, fault = "oom", needs_bytes = {twelve} }},
  # q4_0 pp at 256 needs 100 GiB: out of memory on every gpu-a node
  {{ match = {{ type_k = "q4_0", kind = "pp", n_depth = 256, host_class = "gpu-a" }}, fault = "oom", needs_bytes = {hundred} }},
]
"""


def write(tmp_path, quality_on="any"):
    path = tmp_path / "fleet.toml"
    path.write_text(MATRIX.format(corpus=DEMO_CORPUS, quality_on=quality_on, twelve=12 * GiB, hundred=100 * GiB))
    return path


def rows(con, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


@pytest.fixture(scope="module")
def fleet_run(cluster, tmp_path_factory):
    c, nodes = cluster
    tmp = tmp_path_factory.mktemp("fleet")
    result = run_sweep(write(tmp), RunOptions(run_dir=tmp / "run", address=c.address, progress=False))
    return result, {name: n.node_id for name, n in nodes.items()}


def test_speed_cells_run_on_every_host_class(fleet_run):
    result, ids = fleet_run
    con = connect(result.run_dir)
    classes = {r[0] for r in rows(con, "SELECT DISTINCT host_class FROM plan WHERE kind <> 'quality'")}
    assert classes == {"gpu-a", "mac-b", "tiny-box"}
    # each speed cell ran on a node of its own class
    placed = rows(con, "SELECT DISTINCT host_class, node_id FROM results WHERE kind <> 'quality' AND status = 'ok'")
    for host_class, node in placed:
        expected = {"gpu-a": {ids["small"], ids["big"]}, "mac-b": {ids["mac"]}}[host_class]
        assert node in expected, (host_class, node)


def test_cells_that_fit_nowhere_are_predicted_oom_and_not_tried(fleet_run):
    result, ids = fleet_run
    con = connect(result.run_dir)
    tiny = rows(con, "SELECT status, count(*), max(attempt), min(predicted_bytes) FROM results "
                     "WHERE host_class = 'tiny-box' GROUP BY status")
    assert len(tiny) == 1 and tiny[0][0] == "predicted-oom" and tiny[0][1] == 3 * 3 * 2
    assert tiny[0][3] > 4 * 2**20  # the prediction exceeds the host's 4 MiB
    assert rows(con, f"SELECT count(*) FROM attempts WHERE node_id = '{ids['tiny']}'") == [(0,)]
    msg = rows(con, "SELECT error_message FROM results WHERE host_class = 'tiny-box' LIMIT 1")[0][0]
    assert "predicted" in msg and "largest eligible host has 0.00 GiB" in msg


def test_oom_is_replaced_on_a_host_with_more_memory(fleet_run):
    result, ids = fleet_run
    con = connect(result.run_dir)
    tries = rows(con, "SELECT status, node_id FROM attempts WHERE type_k = 'q8_0' AND kind = 'tg' "
                      "AND n_depth = 256 AND host_class = 'gpu-a' ORDER BY finished_at")
    if tries[0][1] == ids["big"]:  # the big node took it first: no OOM at all, as it should be
        assert tries == [("ok", ids["big"])]
    else:
        assert tries == [("oom", ids["small"]), ("ok", ids["big"])]
        # deeper depths were not skipped: the series followed its head to the bigger host
    assert rows(con, "SELECT status FROM results WHERE type_k = 'q8_0' AND n_depth = 512 AND host_class = 'gpu-a'") == [("ok",), ("ok",)]


def test_oom_everywhere_is_recorded_and_deeper_depths_skipped(fleet_run):
    result, ids = fleet_run
    con = connect(result.run_dir)
    tries = rows(con, "SELECT status, node_id FROM attempts WHERE type_k = 'q4_0' AND kind = 'pp' "
                      "AND n_depth = 256 AND host_class = 'gpu-a' ORDER BY finished_at")
    assert [s for s, _ in tries] == ["oom"] * len(tries) and {n for _, n in tries} <= {ids["small"], ids["big"]}
    assert rows(con, "SELECT status FROM results WHERE type_k = 'q4_0' AND kind = 'pp' AND n_depth = 256 "
                     "AND host_class = 'gpu-a'") == [("oom",)]
    skipped = rows(con, "SELECT kind, status FROM results WHERE type_k = 'q4_0' AND n_depth = 512 "
                        "AND host_class = 'gpu-a' ORDER BY kind")
    assert skipped == [("pp", "skipped"), ("tg", "skipped")]
    # the same configuration on the Mac class was not affected
    assert rows(con, "SELECT DISTINCT status FROM results WHERE type_k = 'q4_0' AND host_class = 'mac-b'") == [("ok",)]


def test_quality_runs_anywhere_once(fleet_run):
    result, ids = fleet_run
    con = connect(result.run_dir)
    q = rows(con, "SELECT config, status, quality_backend FROM cell_status WHERE kind = 'quality' ORDER BY config")
    assert [(c, s) for c, s, _ in q] == [("f16", "ok"), ("q4_0", "ok"), ("q8_0", "ok")]
    assert {b for *_, b in q} == {""}


def test_quality_on_every_backend_compares_the_same_cell_across_backends(cluster, tmp_path):
    c, nodes = cluster
    result = run_sweep(write(tmp_path, "every-backend"),
                       RunOptions(run_dir=tmp_path / "run", address=c.address, progress=False, report=False))
    con = connect(result.run_dir)
    placed = rows(con, "SELECT p.quality_backend, r.backend, r.status FROM plan p JOIN results r USING (cell_id) "
                       "WHERE p.kind = 'quality'")
    assert {b for b, _, _ in placed} == {"CUDA", "Metal", "CPU"}
    for wanted, ran_on, status in placed:
        if wanted == "CPU":  # only the 4 MiB node offers CPU: nothing fits there
            assert status == "predicted-oom"
        else:
            assert ran_on == wanted and status == "ok"
    # the same quality figures on both backends (here both are this CPU, so they agree exactly)
    ppl = rows(con, "SELECT config, count(DISTINCT round(ppl, 9)) FROM quality GROUP BY config")
    assert all(n == 1 for _, n in ppl)


def held_matrix(tmp_path, configs: str, repetitions: int, gate) -> Path:
    """MATRIX with more configurations, and every worker with less than 100 GiB held at its
    first cell until `gate` exists: only a 128 GiB node works meanwhile, however fast cells
    run (a `wait` fault; the cell limit is raised so that holding is not a timeout)."""
    path = tmp_path / "held.toml"
    hold = f'  {{ match = {{}}, fault = "wait", path = "{gate}", needs_bytes = {100 * GiB} }},'
    path.write_text(MATRIX.format(corpus=DEMO_CORPUS, quality_on="any", twelve=0, hundred=0)
                    .replace('symmetric = ["f16", "q8_0", "q4_0"]', f"symmetric = {configs}")
                    .replace("repetitions = 1", f"repetitions = {repetitions}")
                    .replace("cell_timeout_s = 120", "cell_timeout_s = 1800")
                    .replace("[testing]\nfaults = [", "[testing]\nfaults = [\n" + hold))
    return path


def attempts_of_node(run_dir, node_id: str) -> int:
    """Attempts a node made so far: in the write-ahead log, or already in Parquet."""
    from kvsweep.orchestrator.sink import read_wal

    logs = list((run_dir / "results" / "wal").glob("*.wal"))
    seen = [n for log in logs for t, _ in read_wal(log) for n in t.column("node_id").to_pylist()]
    if list((run_dir / "results" / "attempts").glob("*.parquet")):
        seen += [r[0] for r in connect(run_dir).execute("SELECT node_id FROM attempts").fetchall()]
    return seen.count(node_id)


def wait_until(predicate, thread, timeout_s: float = 900) -> None:
    """The others are held at a gate, so the sweep cannot end first; the limit only catches a
    hung test."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert thread.is_alive(), "the sweep ended while held"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_node_lost_mid_sweep_loses_nothing(cluster, tmp_path):
    c, _ = cluster
    extra = c.add_node(**node_args("gpu-a", "CUDA", 128 * GiB))
    c.wait_for_nodes()
    gate = tmp_path / "gate"
    path = held_matrix(tmp_path, '["f16", "q8_0", "q4_0", "q5_0", "iq4_nl"]', 3, gate)
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", run_sweep(
        path, RunOptions(run_dir=tmp_path / "run", address=c.address, progress=False, report=False))))
    thread.start()
    wait_until(lambda: attempts_of_node(tmp_path / "run", extra.node_id) > 0, thread)
    c.remove_node(extra)  # while it works: the rest of the fleet is held
    gate.touch()
    thread.join(timeout=900)
    result = out["r"]
    con = connect(result.run_dir)
    # every planned cell that can run (gpu-a, mac-b) has exactly one ok result
    left = rows(con, "SELECT status, count(*) FROM cell_status WHERE host_class <> 'tiny-box' GROUP BY status")
    assert left == [("ok", result.planned - 30)]  # tiny-box: 5 configs x 3 depths x 2 tests
    assert rows(con, "SELECT max(n) FROM (SELECT count(*) AS n FROM attempts WHERE status = 'ok' GROUP BY cell_id)") == [(1,)]
    lost = rows(con, f"SELECT count(*) FROM attempts WHERE node_id = '{extra.node_id}' AND 'node-lost' = ANY(flags)")
    assert lost[0][0] <= 1  # the cell that was running when the node went (if any) says so


def test_a_node_that_joins_mid_sweep_gets_work(cluster, tmp_path):
    c, _ = cluster
    gate = tmp_path / "gate"
    path = held_matrix(tmp_path, '["f16", "q8_0", "q4_0", "q5_0", "iq4_nl", "q4_1"]', 2, gate)
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", run_sweep(
        path, RunOptions(run_dir=tmp_path / "run", address=c.address, progress=False, report=False,
                         fleet_refresh_s=1.0))))
    thread.start()
    wait_until(lambda: list((tmp_path / "run" / "results" / "wal").glob("*.wal")), thread)  # running
    late = c.add_node(**node_args("gpu-a", "CUDA", 128 * GiB))  # the one node not held
    wait_until(lambda: attempts_of_node(tmp_path / "run", late.node_id) > 0, thread)
    gate.touch()
    thread.join(timeout=900)
    con = connect(out["r"].run_dir)
    assert rows(con, f"SELECT count(*) > 0 FROM attempts WHERE node_id = '{late.node_id}'") == [(True,)]
    assert rows(con, "SELECT count(*) FROM cell_status WHERE status = 'missing'") == [(0,)]
    c.remove_node(late)


def test_quality_units_are_packed_to_fit_the_worker(cluster, tmp_path):
    """A node whose memory holds the baseline and two compared contexts, not three: the
    scheduler runs its quality cells in units that fit (every context is alive at once)."""
    from kvsweep.cells import QUALITY, Cell
    from kvsweep.orchestrator.memory_plan import HEADROOM, predict_group, read_shape
    from kvsweep.workers.generated_models import ModelRecipe, cached_model

    c, _ = cluster
    model = str(cached_model(ModelRecipe()))
    shape = read_shape(model)

    def group(n: int) -> list[Cell]:
        types = ["q8_0", "q5_0", "q4_0", "iq4_nl"][:n]
        return [Cell(kind=QUALITY, model_name="m", model_path=model, model_sha256="x", type_k=t, type_v=t,
                     n_ctx=128, n_batch=128, baseline="f16") for t in types]

    need = [predict_group(group(n), shape).on_device("Vulkan") for n in (1, 2, 3)]
    memory = int((need[1] + need[2]) / 2 / (1 - HEADROOM))  # two compared fit, three do not
    node = c.add_node(**node_args("vk-box", "Vulkan", memory))
    c.wait_for_nodes()
    path = tmp_path / "pack.toml"
    text = MATRIX.format(corpus=DEMO_CORPUS, quality_on="every-backend", twelve=0, hundred=0)
    text = text[:text.index("[speed]")] + text[text.index("[runtime]"):]  # quality only
    path.write_text(text.replace('symmetric = ["f16", "q8_0", "q4_0"]',
                                 'symmetric = ["f16", "q8_0", "q5_0", "q4_0", "iq4_nl"]'))
    try:
        result = run_sweep(path, RunOptions(run_dir=tmp_path / "run", address=c.address, progress=False,
                                            report=False))
    finally:
        c.remove_node(node)
    con = connect(result.run_dir)
    on_vk = rows(con, "SELECT r.status, r.unit_contexts, r.node_id FROM results r JOIN plan p "
                      "USING (cell_id) WHERE p.quality_backend = 'Vulkan'")
    assert len(on_vk) == 5 and {s for s, _, _ in on_vk} == {"ok"}
    assert {n for _, _, n in on_vk} == {node.node_id}
    assert max(u for _, u, _ in on_vk) == 3  # baseline + 2, never more
    # no OOM was needed to find that out: the planner packed the units before they ran
    assert rows(con, "SELECT count(*) FROM attempts WHERE status = 'oom'") == [(0,)]
