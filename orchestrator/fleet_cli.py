"""`kvsweep head`, `kvsweep worker join`, `kvsweep workers`: building and listing a fleet.

A fleet is a Ray cluster: one head (any host; it needs no GPU) and worker hosts that join it.
Both sides run `ray start` with the settings a benchmark fleet wants, so the commands stay
short and the security defaults stay on:

- token authentication on (RAY_AUTH_MODE=token; every host needs the head's token, which
  Ray keeps in ~/.ray/auth_token), no dashboard, no usage statistics sent anywhere;
- fixed ports (see PORTS), so a firewall can allow exactly those between fleet hosts;
- a head bound to a public address is refused unless --allow-public (Ray's token is not
  encrypted: a fleet belongs on a private network, a VPN such as WireGuard/Tailscale, or SSH
  tunnels; docs/fleet.md).

A worker host is probed first, then advertises what it has (fleet_nodes.py); the probe is
also published in Ray's key-value store for `kvsweep workers`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys

from kvsweep.paths import fmt_bytes
from kvsweep.terminal import print_table
from kvsweep.orchestrator.fleet import WORKER_RESOURCE
from kvsweep.orchestrator.fleet_nodes import (  # noqa: F401  (also what the CLI's users import from here)
    KV_PREFIX, FleetError, HostAdvert, NodeRow, advertise, check_label, list_workers)

# Fixed ports so a firewall can allow exactly these between fleet hosts (TCP).
PORTS = {
    "--port": 6379,  # head only: the GCS, where hosts join
    "--node-manager-port": 6380,
    "--object-manager-port": 6381,
    "--runtime-env-agent-port": 6382,
    "--dashboard-agent-grpc-port": 6383,
    "--dashboard-agent-listen-port": 6384,
    "--metrics-export-port": 6385,
    "--min-worker-port": 10002,
    "--max-worker-port": 10100,
}


def is_public(ip: str) -> bool:
    """True for addresses routable on the internet (not private, loopback, CGNAT, link-local)."""
    return ipaddress.ip_address(ip).is_global


def local_ip() -> str:
    """This host's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _ray_env(ip: str = "", joining: bool = False) -> dict:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray starts workers at niceness 15: timed loops would lose the CPU to anything else on
    # the host, and llama-bench (niceness 0) would not (see docs/fidelity.md)
    env["RAY_worker_niceness"] = "0"
    if joining:
        # `ray start --address` refuses to join with it off (Ray's switch for laptops); the node
        # names its own address (--node-ip-address)
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
    elif ip and ipaddress.ip_address(ip).is_loopback:
        # otherwise Ray rewrites 127.0.0.1 to this host's public-facing address
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def _port_args(head: bool, offset: int = 0) -> list[str]:
    return [f"{flag}={port + (offset if flag != '--port' else 0)}"
            for flag, port in PORTS.items() if head or flag != "--port"]


def ray_cli() -> list[str]:
    """Ray's command line of this interpreter's environment. A worker host's `ray start` must
    be its own environment's: Ray starts the node's worker processes with the Python that ran
    it, and a fork's or another backend's build lives in its own environment
    (scripts/build_worker.py), whose bin/ need not be on PATH."""
    return [sys.executable, "-m", "ray.scripts.scripts"]


def head_command(ip: str, with_worker: int = 0, labels: dict | None = None) -> list[str]:
    cmd = [*ray_cli(), "start", "--head", f"--node-ip-address={ip}", "--include-dashboard=false",
           "--disable-usage-stats", f"--num-cpus={with_worker}", *_port_args(head=True)]
    if with_worker:
        cmd += [f"--resources={json.dumps({WORKER_RESOURCE: with_worker})}"]
        if labels:
            cmd += ["--labels=" + ",".join(f"{k}={v}" for k, v in labels.items())]
    return cmd


def join_command(address: str, ip: str, devices: int, labels: dict, port_offset: int = 0) -> list[str]:
    return [*ray_cli(), "start", f"--address={address}", f"--node-ip-address={ip}",
            f"--num-cpus={devices}", f"--resources={json.dumps({WORKER_RESOURCE: devices})}",
            "--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()),
            "--disable-usage-stats", *_port_args(head=False, offset=port_offset)]


def ensure_token() -> str:
    """Ray's token (~/.ray/auth_token), generated on first use."""
    out = subprocess.run([*ray_cli(), "get-auth-token", "--generate"], capture_output=True, text=True,
                         env=_ray_env())
    if out.returncode != 0:
        raise FleetError(f"ray get-auth-token failed: {out.stderr.strip()}")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def start_head(ip: str | None, allow_public: bool, with_worker: bool, host_class: str,
               memory_limit: int, run=subprocess.run, out=print) -> int:
    ip = ip or local_ip()
    if is_public(ip):
        if not allow_public:
            raise FleetError(
                f"{ip} is a public address: Ray's token travels unencrypted, so anyone who can reach "
                "these ports could run code on every host. Bind to a private address (--ip), a VPN "
                "(WireGuard, Tailscale) or an SSH tunnel; --allow-public if you really mean it")
        out(f"WARNING: binding the head to the public address {ip}; see docs/fleet.md")
    token = ensure_token()
    advert = advertise(host_class, memory_limit) if with_worker else None
    cmd = head_command(ip, advert.devices if advert else 0, advert.labels() if advert else None)
    done = run(cmd, env=_ray_env(ip))
    if done.returncode != 0:
        return done.returncode
    address = f"{ip}:{PORTS['--port']}"
    if advert:
        publish(address, advert, ip)
    out(f"\nkvsweep head is up at {address} (token authentication on, no dashboard).")
    out("On each worker host (same kvsweep and llama-cpp-python build for its backend):")
    out(f"  1. copy the token: it is in ~/.ray/auth_token here ({len(token)} characters); put it in")
    out("     ~/.ray/auth_token there, or export RAY_AUTH_TOKEN=... before joining")
    out(f"  2. kvsweep worker join --address {address}")
    out("Allow TCP between fleet hosts only, on ports "
        f"{PORTS['--port']}-{PORTS['--metrics-export-port']} and "
        f"{PORTS['--min-worker-port']}-{PORTS['--max-worker-port']}.")
    out(f"Then: kvsweep workers --address {address}   and   kvsweep run MATRIX --address {address}")
    return 0


def join(address: str, ip: str | None, host_class: str, memory_limit: int, check_pairs: bool,
         run=subprocess.run, out=print, port_offset: int = 0) -> int:
    head_ip = address.rsplit(":", 1)[0]
    ip = ip or local_ip()
    advert = advertise(host_class, memory_limit, check_pairs)
    for line in device_notes(advert.probe):
        out(line)
    if advert.capabilities:
        from kvsweep.workers.capabilities import summary

        out(f"cache pairs with flash attention on {advert.backend}: {summary(advert.capabilities)}")
    if is_public(head_ip):
        out(f"WARNING: the head {head_ip} is a public address; see docs/fleet.md")
    env = _ray_env(ip, joining=True)
    if not check_pairs:  # the node's workers do not check either (workers/actor.py)
        env["KVSWEEP_SKIP_PAIR_CHECK"] = "1"
    done = run(join_command(address, ip, advert.devices, advert.labels(), port_offset), env=env)
    if done.returncode != 0:
        return done.returncode
    publish(address, advert, ip, port_offset)
    probe = advert.probe
    out(f"joined {address} as host class '{advert.host_class}' ({advert.backend}, "
        f"{advert.devices} device(s), {advert.memory / 2**30:.1f} GiB, llama.cpp build "
        f"{probe.get('build_name', 'mainline')} {probe.get('build_commit', '?')})")
    return 0


def device_notes(probe: dict) -> list[str]:
    """What a host's devices mean for its figures: a CPU-type Vulkan device (Mesa's lavapipe)
    in use, or one llama.cpp skips unless told."""
    notes = []
    used = [d for d in probe.get("devices", []) if d.get("kind") != "cpu"]
    for d in used:
        if d.get("device_type") == "cpu":
            notes.append(f"note: {d['name']} ({d['description']}) is a CPU-type {d['backend']} device: its "
                         "speed cells are flagged cpu-type-device (not a GPU's figures); quality cells are fine")
    if not any(d.get("backend") == "Vulkan" for d in used):
        skipped = [v for v in probe.get("vulkan_devices", []) if v.get("device_type") == "cpu"]
        for v in skipped:
            notes.append(f"note: the Vulkan device {v['index']} ({v['name']}) is CPU-type, which llama.cpp "
                         f"skips: GGML_VK_VISIBLE_DEVICES={v['index']} makes this worker use it (docs/vulkan.md)")
    return notes


def publish(address: str, advert: HostAdvert, ip: str = "", port_offset: int = 0) -> None:
    """Put this host's probe into Ray's key-value store, for `kvsweep workers`: under the node
    this host just started (its address and node-manager port; several nodes may share a host,
    one per llama.cpp build), else under the node this process attached to."""
    from kvsweep.orchestrator.fleet import connect

    connect(address)
    import ray
    from ray.experimental import internal_kv

    try:
        port = PORTS["--node-manager-port"] + port_offset
        ours = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("NodeManagerAddress") == ip
                and n.get("NodeManagerPort") == port]
        node_id = ours[0] if ours else ray.get_runtime_context().get_node_id()
        payload = {"probe": advert.probe, "capabilities": advert.capabilities,
                   "host_class": advert.host_class}
        internal_kv._internal_kv_put(KV_PREFIX + node_id, json.dumps(payload), overwrite=True)
    finally:
        ray.shutdown()


def print_workers(rows: list[NodeRow], out=print) -> None:
    header = ["node", "address", "host", "host class", "backend", "devices", "busy", "memory",
              "device", "llama.cpp", "K/V pairs (flash attention)"]
    table = [[r.node_id, r.address, r.host, r.host_class, r.backend, str(r.devices), str(r.busy),
              fmt_bytes(r.memory) if r.memory else "?", r.device_name, r.build, r.pairs]
             for r in rows]
    if table:
        print_table(header, table, out=out, numeric=[5, 6], indent=0)
    else:
        out("(no kvsweep workers: join hosts with `kvsweep worker join --address HEAD:PORT`)")


def parse_size(text: str) -> int:
    """'24GiB', '24G', '512MiB', '1073741824' -> bytes."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise FleetError(f"cannot read {text!r} as a size: write e.g. 24GiB or 512MiB")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)


if __name__ == "__main__":  # pragma: no cover - debugging aid
    print_workers(list_workers(sys.argv[1] if len(sys.argv) > 1 else None))
