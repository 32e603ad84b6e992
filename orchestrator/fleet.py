"""The fleet: a Ray cluster (embedded, or one that hosts joined) and a worker actor per device.

Embedded (no --address): a local Ray bound to 127.0.0.1 with the dashboard off and a fixed CPU
count, advertising this host's devices. Ray's ray.init() turns 127.0.0.1 into the machine's
public address on Linux unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the switch Ray itself uses
on laptops), so that is set before Ray is imported: then every Ray port listens on loopback.

A host advertises devices as the custom resource `kvsweep_worker` (one per device) and labels
`kvsweep_host_class` / `kvsweep_backend` (`kvsweep worker join` sets them). The driver creates
one DeviceWorker actor per device, pinned to its node, restarted by Ray if its process dies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

WORKER_RESOURCE = "kvsweep_worker"
LABEL_HOST_CLASS = "kvsweep_host_class"
LABEL_BACKEND = "kvsweep_backend"
# bytes kvsweep may assume a device of this node has (default: what the probe reads): to leave
# room for other programs, or to model hosts of different sizes in tests
LABEL_MEMORY = "kvsweep_memory_bytes"


def prepare_loopback_env() -> None:
    """Must run before `import ray` for a cluster on this host to bind to 127.0.0.1 only.

    Only for loopback clusters: a driver joining a fleet on a real network must advertise its
    own reachable address (workers stream results back to it)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls home


def _is_loopback(address: str) -> bool:
    import ipaddress

    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class WorkerSlot:
    worker_id: str
    actor: object
    node_id: str
    host: str
    host_class: str
    backend: str
    device_name: str
    memory_total: int
    memory_free: int
    provenance: dict = field(default_factory=dict)  # attempt columns from the host probe
    # the K/V cache types and "k/v" pairs its llama.cpp build runs (workers/capabilities.py);
    # None: not known (the fake runner of scheduler tests), then nothing is kept from it
    kv_types: frozenset[str] | None = None
    kv_pairs: frozenset[str] | None = None
    build: str = ""  # "turboquant 69d8e4b": the build, as messages name it
    loaded_model: str = ""
    alive: bool = True
    busy: bool = False

    def row_fields(self) -> dict:
        return {
            "host": self.host,
            "node_id": self.node_id,
            "worker_id": self.worker_id,
            "host_class": self.host_class,
            "backend": self.backend,
            "device_name": self.device_name,
            "device_memory_total": self.memory_total,
            "device_memory_free": self.memory_free,
            **self.provenance,
        }

    def runs(self, type_k: str, type_v: str) -> bool:
        """Whether this worker's build runs the K/V pair (True when its build is not known)."""
        return self.kv_pairs is None or f"{type_k}/{type_v}" in self.kv_pairs


def learn_storage(capabilities: dict) -> None:
    """Storage facts of a build's types kvsweep has no entry for (a fork's), for the planner."""
    from kvsweep import cache_types

    for name, facts in (capabilities.get("storage") or {}).items():
        if cache_types.lookup(name) is None:
            cache_types.learn(cache_types.from_build(name, facts["block_size"], facts["type_size"]))


def start_embedded(n_workers: int = 1, num_cpus: int | None = None, host_class: str = "",
                   memory_limit: int = 0) -> None:
    prepare_loopback_env()
    # Ray starts worker processes at niceness 15 unless told otherwise: on a host where anything
    # else runs, the timed loops would then lose the CPU to it and llama-bench (niceness 0) would
    # not (attempt rows record the niceness a cell ran at: `worker_niceness`).
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    labels = {LABEL_HOST_CLASS: host_class} if host_class else {}
    if memory_limit:  # the memory kvsweep may assume on this host (`kvsweep run --memory-limit`)
        labels[LABEL_MEMORY] = str(memory_limit)
    ray.init(
        # "local": always a new cluster of our own. Without it ray.init() joins a cluster that
        # another process on this machine started (found through /tmp/ray/ray_current_cluster)
        # and then refuses num_cpus.
        address="local",
        num_cpus=num_cpus or n_workers,
        resources={WORKER_RESOURCE: n_workers},
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level="ERROR",
        labels=labels or None,
    )


def connect(address: str) -> None:
    """Join an existing cluster as the driver.

    Token authentication is assumed (RAY_AUTH_MODE=token, the token in ~/.ray/auth_token or
    RAY_AUTH_TOKEN): `kvsweep head` fleets use it, and Ray 2.61 makes it the default for every
    cluster. Ray reads the mode once per process, so it cannot be guessed by trying: for a
    cluster started without token authentication, run with RAY_AUTH_MODE=disabled."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if _is_loopback(address):
        prepare_loopback_env()
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")


def ensure_ray(address: str | None, n_workers: int = 1, memory_limit: int = 0) -> bool:
    """Join `address`, or start an embedded cluster, unless this process already has Ray.

    Returns whether it started or joined one (then the caller shuts it down). The environment
    Ray reads at import is set before Ray is first imported."""
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return False
    if address:
        connect(address)
    else:
        start_embedded(n_workers=n_workers, memory_limit=memory_limit)
    return True


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def worker_nodes() -> list[dict]:
    """Alive nodes that offer kvsweep workers."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(WORKER_RESOURCE)]


def node_alive(node_id: str) -> bool:
    import ray

    return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())


def create_slots(runner: str = "llama", fake_cell_seconds: float = 0.0, n_threads: int = 0,
                 retry=None, fault_plan=None, known: set[str] | None = None,
                 env: dict[str, str] | None = None) -> list[WorkerSlot]:
    """One DeviceWorker per advertised device on every worker node (skipping `known` ids)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from kvsweep.workers.actor import DeviceWorker

    remote_cls = ray.remote(DeviceWorker)
    pending = []
    for node in worker_nodes():
        labels = node.get("Labels", {}) or {}
        memory_limit = int(labels.get(LABEL_MEMORY, 0) or 0)
        count = int(node["Resources"][WORKER_RESOURCE])
        for index in range(count):
            worker_id = f"{node['NodeID'][:8]}-{index}"
            if known and worker_id in known:
                continue
            actor = remote_cls.options(
                num_cpus=1 if runner != "fake" else 0.01,
                resources={WORKER_RESOURCE: 1},
                max_restarts=-1,
                max_task_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            ).remote(worker_id, index, runner, fake_cell_seconds, n_threads, retry, fault_plan,
                     memory_limit, labels.get(LABEL_BACKEND, ""), count, env)
            pending.append((actor, labels))
    slots = []
    refs = [actor.describe.remote() for actor, _ in pending]
    for (actor, labels), ref in zip(pending, refs):
        try:
            info = ray.get(ref, timeout=300)
        except Exception as exc:  # e.g. its node is still starting, or just left
            from loguru import logger

            logger.warning(f"a worker could not start ({type(exc).__name__}); the fleet is "
                           "looked for again while the sweep runs (with --address)")
            ray.kill(actor)
            continue
        slots.append(_slot(actor, labels, info))
    return slots


def _slot(actor, labels: dict, info: dict) -> WorkerSlot:
    from kvsweep.workers.probe import HostProbe

    probe = HostProbe.from_dict(info["probe"])
    gpus = probe.gpu_devices
    device = gpus[info["device_index"]] if info["device_index"] < len(gpus) else None
    memory_total = device.memory_total if device else probe.ram_total
    memory_free = device.memory_free if device else probe.ram_free
    limit = int(labels.get(LABEL_MEMORY, 0) or 0)
    if limit:
        memory_total, memory_free = limit, min(memory_free, limit)
    caps = info.get("capabilities") or {}
    pairs = caps.get("pairs")
    learn_storage(caps)
    return WorkerSlot(
        worker_id=info["worker_id"],
        actor=actor,
        node_id=info["node_id"],
        host=probe.host,
        host_class=labels.get(LABEL_HOST_CLASS) or probe.default_host_class(),
        backend=labels.get(LABEL_BACKEND) or probe.primary_backend,
        device_name=device.description if device else probe.cpu_info,
        memory_total=memory_total,
        memory_free=memory_free,
        provenance={
            "kvsweep_version": probe.kvsweep_version,
            "llama_cpp_python_version": probe.llama_cpp_python_version,
            "build_commit": probe.build_commit,
            "build_name": probe.build_name,
            "ggml_version": probe.ggml_version,
            "backends": probe.backends,
            "cpu_info": probe.cpu_info,
            "gpu_info": probe.gpu_info,
            "driver_version": probe.driver_version,
        },
        kv_types=frozenset(caps["cache_types"]) if "cache_types" in caps else None,
        kv_pairs=frozenset(p for p, e in pairs.items() if e.get("ok")) if pairs is not None else None,
        build=f"{probe.build_name} {probe.build_commit}",
    )
