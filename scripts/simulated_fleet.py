"""A heterogeneous fleet simulated on one machine, to try kvsweep's fleet features without one.

Starts a Ray cluster (ray.cluster_utils.Cluster, all on 127.0.0.1) whose nodes advertise
different host classes, backends and memory through kvsweep's node labels, publishes this
host's probe for each node (what `kvsweep worker join` would do on real hosts), then prints
`kvsweep workers` and `kvsweep run --dry-run` against it. Every node computes on this
machine's CPU: the labels are what differs. docs/fleet.md shows this script's output.

    python scripts/simulated_fleet.py [MATRIX]        (default: matrices/demo.toml)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kvsweep.orchestrator.fleet import (
    LABEL_BACKEND, LABEL_HOST_CLASS, LABEL_MEMORY, WORKER_RESOURCE, prepare_loopback_env,
)

GiB = 2**30
NODES = [  # (host class, backend, advertised memory, devices)
    ("cuda-rtx-4090", "CUDA", 24 * GiB, 2),
    ("metal-m5-max", "Metal", 128 * GiB, 1),
    ("vulkan-rx-7900", "Vulkan", 20 * GiB, 1),
    ("cpu-tiny-vm", "CPU", 8 * 2**20, 1),  # 8 MiB: shows the planner's predicted-oom
]


def main() -> None:
    import os

    os.environ["RAY_AUTH_MODE"] = "token"  # as `kvsweep head` fleets are (the driver's default)
    prepare_loopback_env()
    import ray
    from ray.cluster_utils import Cluster
    from ray.experimental import internal_kv

    from kvsweep.orchestrator.fleet_cli import KV_PREFIX, list_workers, print_workers
    from kvsweep.orchestrator.plan_view import print_plan
    from kvsweep.orchestrator.sweep import dry_run
    from kvsweep.workers.capabilities import host_capabilities
    from kvsweep.workers.probe import probe_host

    matrix = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "matrices" / "demo.toml")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=n, resources={WORKER_RESOURCE: n},
                                  labels={LABEL_HOST_CLASS: c, LABEL_BACKEND: b, LABEL_MEMORY: str(m)})
                 for c, b, m, n in NODES]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        probe, caps = probe_host().to_dict(), host_capabilities()
        for node in nodes:  # what each host's `kvsweep worker join` publishes
            internal_kv._internal_kv_put(KV_PREFIX + node.node_id,
                                         json.dumps({"probe": probe, "capabilities": caps}), overwrite=True)
        print(f"$ kvsweep workers --address {cluster.address}")
        print_workers(list_workers(cluster.address))
        print(f"\n$ kvsweep run --dry-run {matrix.name} --address {cluster.address}")
        plan = dry_run(matrix, cluster.address)
        print_plan(plan, cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
