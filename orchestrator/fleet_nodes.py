"""The fleet's worker nodes as the cluster knows them: what each host advertises, and the list
`kvsweep workers`, the dry run and the scheduler's view read (a library module: the CLI in
fleet_cli.py and the sweep both use it).

A worker host is probed (backends, devices, memory, llama.cpp build, which K/V pairs run with
flash attention: workers/capabilities.py) and advertises what it has: the custom resource
`kvsweep_worker` (one per device) and labels for host class, backend and memory. The probe is
also published in Ray's key-value store under KV_PREFIX + node id.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from kvsweep.orchestrator.fleet import LABEL_BACKEND, LABEL_HOST_CLASS, LABEL_MEMORY, WORKER_RESOURCE

_LABEL_VALUE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?")
KV_PREFIX = "kvsweep:host:"


class FleetError(RuntimeError):
    pass


def check_label(name: str, value: str) -> str:
    if not _LABEL_VALUE.fullmatch(value):
        raise FleetError(f"{name} {value!r} cannot be a Ray node label: use up to 63 letters, digits, "
                         "'-', '_' or '.', starting and ending with a letter or digit")
    return value


@dataclass
class HostAdvert:
    """What a worker host advertises, from its probe."""

    host_class: str
    backend: str
    devices: int
    memory: int
    probe: dict
    capabilities: dict

    def labels(self) -> dict[str, str]:
        return {LABEL_HOST_CLASS: self.host_class, LABEL_BACKEND: self.backend, LABEL_MEMORY: str(self.memory)}


def advertise(host_class: str = "", memory_limit: int = 0, check_pairs: bool = True) -> HostAdvert:
    from kvsweep.workers.probe import probe_host

    probe = probe_host()
    gpus = probe.gpu_devices
    memory = gpus[0].memory_total if gpus else probe.ram_total
    if memory_limit:
        memory = min(memory, memory_limit)
    capabilities = {}
    if check_pairs:
        from kvsweep.workers.capabilities import host_capabilities

        capabilities = host_capabilities()
    cls = host_class or probe.default_host_class()[:63].rstrip("-")
    return HostAdvert(
        host_class=check_label("host class", cls),
        backend=check_label("backend", probe.primary_backend),
        devices=max(1, len(gpus)),
        memory=memory,
        probe=probe.to_dict(),
        capabilities=capabilities,
    )


@dataclass
class NodeRow:
    node_id: str
    address: str
    host: str
    host_class: str
    backend: str
    devices: int
    busy: int
    memory: int
    device_name: str
    build: str
    pairs: str
    cache_types: frozenset[str] | None = None  # what its build runs as K/V caches (None: not checked)
    kv_pairs: frozenset[str] | None = None


def _types_and_pairs(capabilities: dict) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    if not capabilities or "pairs" not in capabilities:
        return None, None
    from kvsweep.orchestrator.fleet import learn_storage
    from kvsweep.workers.capabilities import supported_pairs

    learn_storage(capabilities)
    types = capabilities.get("cache_types")
    return (frozenset(types) if types is not None else None), frozenset(supported_pairs(capabilities))


def list_workers(address: str | None) -> list[NodeRow]:
    """The fleet's worker nodes (labels, resources and published probes; no actors started)."""
    if address is None:
        return [_local_row()]
    from kvsweep.orchestrator.fleet import ensure_ray
    from kvsweep.workers.capabilities import summary

    started = ensure_ray(address)
    import ray
    from ray.experimental import internal_kv

    try:
        rows = []
        for node in ray.nodes():
            total = node.get("Resources", {}).get(WORKER_RESOURCE)
            if not node.get("Alive") or not total:
                continue
            labels = node.get("Labels", {}) or {}
            raw = internal_kv._internal_kv_get(KV_PREFIX + node["NodeID"])
            info = json.loads(raw) if raw else {}
            probe = info.get("probe", {})
            gpus = [d for d in probe.get("devices", []) if d.get("kind") != "cpu"]
            rows.append(NodeRow(
                node_id=node["NodeID"][:8],
                address=node.get("NodeManagerAddress", ""),
                host=probe.get("host", node.get("NodeManagerHostname", "")),
                host_class=labels.get(LABEL_HOST_CLASS, "(probed when a sweep starts)"),
                backend=labels.get(LABEL_BACKEND, "?"),
                devices=int(total),
                busy=int(total - _available(node["NodeID"])),
                memory=int(labels.get(LABEL_MEMORY, 0) or 0),
                device_name=_device_label(gpus[0]) if gpus else probe.get("cpu_info", "?"),
                build=f"{probe.get('build_name', 'mainline')} {probe.get('build_commit', '?')}",
                pairs=summary(info["capabilities"]) if info.get("capabilities") else "not checked",
                **dict(zip(("cache_types", "kv_pairs"), _types_and_pairs(info.get("capabilities", {})))),
            ))
        return rows
    finally:
        if started:
            ray.shutdown()


def _device_label(device: dict) -> str:
    return device["description"] + (" [CPU-type]" if device.get("device_type") == "cpu" else "")


def _available(node_id: str) -> float:
    # Ray has no public per-node view of available resources; this module-level helper of
    # ray._private.state is the one `ray status` itself relies on
    from ray._private.state import available_resources_per_node

    return available_resources_per_node().get(node_id, {}).get(WORKER_RESOURCE, 0.0)


def _local_row() -> NodeRow:
    advert = advertise(check_pairs=True)
    from kvsweep.workers.capabilities import summary

    probe = advert.probe
    gpus = [d for d in probe["devices"] if d["kind"] != "cpu"]
    return NodeRow(node_id="(local)", address="127.0.0.1", host=probe["host"],
                   host_class=advert.host_class, backend=advert.backend, devices=advert.devices,
                   busy=0, memory=advert.memory,
                   device_name=_device_label(gpus[0]) if gpus else probe["cpu_info"],
                   build=f"{probe.get('build_name', 'mainline')} {probe['build_commit']}",
                   pairs=summary(advert.capabilities),
                   **dict(zip(("cache_types", "kv_pairs"), _types_and_pairs(advert.capabilities))))
