"""`kvsweep head`, `kvsweep worker join`, `kvsweep workers`: commands, guards, and a real head."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT
from kvsweep.orchestrator import fleet_cli
from kvsweep.orchestrator.fleet import LABEL_BACKEND, LABEL_HOST_CLASS, LABEL_MEMORY, WORKER_RESOURCE
from kvsweep.workers.capabilities import graph_splits, summary


@pytest.mark.parametrize("ip,public", [("8.8.8.8", True), ("10.1.2.3", False), ("192.168.0.7", False),
                                       ("172.20.0.1", False), ("100.101.102.103", False),  # CGNAT / Tailscale
                                       ("127.0.0.1", False), ("169.254.1.1", False), ("2001:4860::1", True),
                                       ("fd00::1", False)])
def test_public_addresses_are_recognised(ip, public):
    assert fleet_cli.is_public(ip) is public


def test_head_refuses_a_public_address_unless_asked():
    calls = []
    with pytest.raises(fleet_cli.FleetError, match="public address"):
        fleet_cli.start_head("8.8.8.8", allow_public=False, with_worker=False, host_class="",
                             memory_limit=0, run=lambda *a, **k: calls.append(a))
    assert calls == [], "ray start never ran"


def test_commands_carry_the_fleet_settings():
    head = fleet_cli.head_command("10.0.0.5", with_worker=0)
    assert head[:3] == fleet_cli.ray_cli() and head[3:5] == ["start", "--head"]
    assert head[0] == sys.executable, "the environment's own Ray starts the node"
    assert "--node-ip-address=10.0.0.5" in head
    assert "--include-dashboard=false" in head and "--port=6379" in head and "--num-cpus=0" in head
    labels = {LABEL_HOST_CLASS: "cuda-h100", LABEL_BACKEND: "CUDA", LABEL_MEMORY: str(80 * 2**30)}
    join = fleet_cli.join_command("10.0.0.5:6379", "10.0.0.9", 2, labels)
    assert "--address=10.0.0.5:6379" in join and "--num-cpus=2" in join
    assert f"--resources={json.dumps({WORKER_RESOURCE: 2})}" in join
    assert f"--labels={LABEL_HOST_CLASS}=cuda-h100,{LABEL_BACKEND}=CUDA,{LABEL_MEMORY}={80 * 2**30}" in join
    assert "--port=6379" not in join and "--node-manager-port=6380" in join
    assert "--min-worker-port=10002" in join and "--max-worker-port=10100" in join
    second = fleet_cli.join_command("10.0.0.5:6379", "10.0.0.9", 1, labels, port_offset=100)
    assert "--node-manager-port=6480" in second and "--min-worker-port=10102" in second


def test_join_runs_ray_start_with_the_probe(monkeypatch):
    advert = fleet_cli.HostAdvert("metal-m5-max", "Metal", 1, 128 * 2**30, {"host": "mac"}, {})
    monkeypatch.setattr(fleet_cli, "advertise", lambda *a, **k: advert)
    published = []
    monkeypatch.setattr(fleet_cli, "publish", lambda address, adv, ip, offset: published.append((address, adv, ip, offset)))
    calls = []
    code = fleet_cli.join("10.0.0.5:6379", "10.0.0.9", "", 0, False,
                          run=lambda cmd, env: calls.append((cmd, env)) or SimpleNamespace(returncode=0),
                          out=lambda *a: None)
    assert code == 0
    (cmd, env), = calls
    assert cmd[0] == sys.executable
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["RAY_worker_niceness"] == "0"  # timed cells must not run niced
    assert f"--labels={LABEL_HOST_CLASS}=metal-m5-max,{LABEL_BACKEND}=Metal,{LABEL_MEMORY}={128 * 2**30}" in cmd
    assert published == [("10.0.0.5:6379", advert, "10.0.0.9", 0)]


def test_labels_and_sizes_are_checked():
    assert fleet_cli.check_label("host class", "cuda-nvidia-h100") == "cuda-nvidia-h100"
    with pytest.raises(fleet_cli.FleetError, match="63 letters"):
        fleet_cli.check_label("host class", "has space")
    assert fleet_cli.parse_size("24GiB") == 24 * 2**30 and fleet_cli.parse_size("512M") == 512 * 2**20
    assert fleet_cli.parse_size("1000") == 1000
    with pytest.raises(fleet_cli.FleetError):
        fleet_cli.parse_size("lots")


def test_capability_report_helpers():
    lines = ["sched_reserve: graph: nodes = 499, splits = 1", "llama_context: graph splits = 3"]
    assert graph_splits(lines) == 3 and graph_splits(["nothing"]) is None
    report = {"pairs": {"f16/f16": {"ok": True}, "q8_0/q4_0": {"ok": True, "fallback": True},
                        "q4_1/f32": {"ok": False, "error": "x"}}}
    assert summary(report) == "2/3 pairs ok; fail: q4_1/f32; CPU fallback: q8_0/q4_0"
    report["cache_types"] = ["f16", "q8_0", "q4_0"]
    assert summary(report).startswith("3 types, 2/3 pairs ok")


def test_this_host_checks_every_pair():
    from kvsweep.workers.capabilities import host_capabilities

    report = host_capabilities()
    assert len(report["pairs"]) == 81
    # the CPU backend runs every mainline pair with flash attention, and never "falls back"
    assert all(e["ok"] and not e["fallback"] for e in report["pairs"].values())
    assert all(e["splits"] is not None for e in report["pairs"].values())


@pytest.mark.ray
@pytest.mark.slow
def test_a_real_head_lists_its_worker_and_runs_a_sweep(tmp_path):
    """kvsweep head on loopback (real `ray start`, token auth), kvsweep workers, kvsweep run."""
    def kvsweep(*args, timeout=300):
        return subprocess.run([sys.executable, "-m", "kvsweep", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    head = kvsweep("head", "--ip", "127.0.0.1", "--with-worker", "--host-class", "test-box")
    try:
        assert head.returncode == 0, head.stdout + head.stderr
        assert "kvsweep worker join --address 127.0.0.1:6379" in head.stdout
        listed = kvsweep("workers", "--address", "127.0.0.1:6379")
        assert listed.returncode == 0, listed.stderr
        assert "test-box" in listed.stdout and "9 types, 81/81 pairs ok" in listed.stdout
        matrix = tmp_path / "m.toml"
        matrix.write_text((ROOT / "matrices" / "demo.toml").read_text()
                          .replace('corpus = "corpora/demo.txt"', f'corpus = "{ROOT}/matrices/corpora/demo.txt"')
                          .replace("depths = [0, 1024, 4096]", "depths = [0]"))
        done = kvsweep("run", matrix, "--address", "127.0.0.1:6379", "--run-dir", tmp_path / "run", "--no-progress")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "16 planned" in done.stdout and "16 ok" in done.stdout
        from kvsweep.analysis.db import connect

        niceness = connect(tmp_path / "run").execute("SELECT DISTINCT worker_niceness FROM attempts").fetchall()
        assert niceness == [(0,)]
        # nothing listens beyond loopback
        # nothing of this head listens beyond loopback (its fixed ports; other Ray clusters on
        # the machine, e.g. other test runs, are not this test's business)
        ss = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        ours = [line.split()[3] for line in ss.splitlines()[1:]
                if 6379 <= int(line.split()[3].rsplit(":", 1)[1]) <= 6385]
        assert len(ours) >= 3, ss  # the GCS, the node manager, the object manager at least
        loopback = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")
        assert [a for a in ours if not a.startswith(loopback)] == []
    finally:
        stop_cluster("127.0.0.1:6379")


def stop_cluster(gcs_address: str) -> None:
    """Stop one Ray cluster (`ray stop` would stop every cluster on the machine): its GCS
    serves that port, and every one of its processes names the GCS's session."""
    import os
    import re
    import signal
    import time

    port = gcs_address.rsplit(":", 1)[1]

    def processes() -> list[tuple[int, str]]:
        """(pid, command line) of every process, from /proc (ps may cut long lines)."""
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    raw = open(f"/proc/{entry}/cmdline", "rb").read()
                except OSError:
                    continue
                if raw:
                    out.append((int(entry), raw.replace(b"\0", b" ").decode(errors="replace").strip()))
        return out

    sessions = {m.group(1) for _, args in processes()
                if args.split()[0].endswith("/gcs_server") and f"--gcs_server_port={port}" in args.split()
                for m in [re.search(r"--session-name=(session_\S+)", args)] if m}

    def tree() -> set[int]:
        """The cluster's processes and their descendants (Ray renames its workers and agents,
        e.g. ray::DashboardAgent, so their command lines no longer name the session)."""
        parent = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = open(f"/proc/{entry}/stat").read()
                except OSError:
                    continue
                parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        found = {pid for pid, args in processes() if any(s in args for s in sessions)}
        grew = True
        while grew:
            more = {pid for pid, ppid in parent.items() if ppid in found} - found
            found |= more
            grew = bool(more)
        return found - {os.getpid()}

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in tree():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and tree():
            time.sleep(0.2)
