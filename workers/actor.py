"""The Ray actor that owns one device: it keeps a model loaded and runs work units on it.

The actor is a thin shell around UnitRunner (or FakeRunner in scheduler tests): Ray gives it a
process of its own, so a llama.cpp abort or segfault kills only this actor; Ray restarts it
(the orchestrator creates it with max_restarts=-1) and the orchestrator records the crash.
`run_unit` is a generator: Ray streams each event to the driver as soon as it is yielded.
"""

from __future__ import annotations

import os
import socket

from kvsweep.cells import WorkUnit
from kvsweep.workers import faults
from kvsweep.workers.probe import probe_host, refresh_memory
from kvsweep.workers.llama_api import LogCapture
from kvsweep.workers.runner import RetryPolicy, UnitRunner
from kvsweep.workers.worker_log import WorkerLog


# Environment variables that make one device visible to llama.cpp's backend, by backend.
_VISIBLE_DEVICES = {"CUDA": "CUDA_VISIBLE_DEVICES", "Vulkan": "GGML_VK_VISIBLE_DEVICES",
                    "ROCm": "HIP_VISIBLE_DEVICES", "HIP": "HIP_VISIBLE_DEVICES"}


def pin_device(backend: str, index: int, count: int) -> None:
    """On a host with several devices, this worker sees only its own (one actor per device).

    Must run before llama.cpp initializes its backend in this process."""
    var = _VISIBLE_DEVICES.get(backend)
    if var and count > 1:
        visible = os.environ.get(var)
        ids = visible.split(",") if visible else [str(i) for i in range(count)]
        os.environ[var] = ids[index] if index < len(ids) else str(index)


class DeviceWorker:
    def __init__(self, worker_id: str, device_index: int = 0, runner: str = "llama",
                 fake_cell_seconds: float = 0.0, n_threads: int = 0,
                 retry: RetryPolicy | None = None, fault_plan: list[dict] | None = None,
                 memory_limit: int = 0, backend: str = "", device_count: int = 1):
        pin_device(backend, device_index, device_count)
        self.worker_id = worker_id
        self.device_index = device_index
        self.log = WorkerLog(worker_id, redirect_stderr=runner != "fake")
        faults.set_plan(fault_plan, memory_limit)
        if runner == "fake":
            from kvsweep.workers.fake_runner import FakeRunner

            self.runner = FakeRunner(fake_cell_seconds)
        else:
            self.runner = UnitRunner(n_threads=n_threads, retry=retry)
            LogCapture.install().mirror = self.log.write
        self.runner_kind = runner

    def crash_report(self) -> str:
        """The last lines the previous process of this worker wrote before it died."""
        return self.log.crash_report()

    def describe(self) -> dict:
        """The host probe plus where this actor lives; memory figures are current."""
        import ray

        probe = refresh_memory(probe_host()) if self.runner_kind != "fake" else probe_host()
        return {
            "worker_id": self.worker_id,
            # after pinning, this worker's device is the first one it sees
            "device_index": 0 if len(probe.gpu_devices) == 1 else self.device_index,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "probe": probe.to_dict(),
            "model_loads": getattr(getattr(self.runner, "models", None), "loads", 0),
        }

    def run_unit(self, unit: WorkUnit, corpora_refs: dict):
        import ray

        needed = {c.corpus_sha256 for c in unit.cells if c.corpus_sha256}
        corpora = {sha: ray.get(ref) for sha, ref in corpora_refs.items() if sha in needed}
        yield from self.runner.run(unit, corpora)
