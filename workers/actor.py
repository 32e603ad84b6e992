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
from kvsweep.messages import RetryPolicy
from kvsweep.workers.runner import UnitRunner
from kvsweep.workers.worker_log import WorkerLog


# Knobs of forks that silently change what runs, pinned off in every worker unless the matrix
# sets them (runtime.env): the TurboQuant fork stores some layers' V as q8_0 when V is turbo2
# and the model has 8+ layers (TURBO_LAYER_ADAPTIVE, decided once per process by its first
# context), and upgrades a symmetric turbo K to q8_0 at GQA ratios >= 6
# (TURBO_AUTO_ASYMMETRIC). Mainline reads neither. Set before llama.cpp makes any context;
# recorded on every row (env_effective).
PINNED_ENV = {"TURBO_LAYER_ADAPTIVE": "0", "TURBO_AUTO_ASYMMETRIC": "0"}


def apply_process_env(matrix_env: dict[str, str]) -> None:
    """The worker process's environment: the pins, then the matrix's runtime.env (which also
    applies per unit; some knobs are read once per process, so they must be set here too)."""
    for key, value in {**PINNED_ENV, **matrix_env}.items():
        os.environ[key] = str(value)


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


SKIP_PAIR_CHECK_ENV = "KVSWEEP_SKIP_PAIR_CHECK"

# Speed cells of a worker whose device computes on the CPU though it is a GPU backend's (Mesa's
# lavapipe on Vulkan): the figures say nothing about a GPU. Quality cells are fine there.
CPU_TYPE_DEVICE = "cpu-type-device"


def device_flags(device_index: int) -> tuple[str, ...]:
    """Flags for the speed cells of the worker on this device (after pin_device)."""
    gpus = probe_host().gpu_devices
    if not gpus:
        return ()
    device = gpus[0] if len(gpus) == 1 else gpus[min(device_index, len(gpus) - 1)]
    return (CPU_TYPE_DEVICE,) if device.cpu_type else ()


class DeviceWorker:
    def __init__(self, worker_id: str, device_index: int = 0, runner: str = "llama",
                 fake_cell_seconds: float = 0.0, n_threads: int = 0,
                 retry: RetryPolicy | None = None, fault_plan: list[dict] | None = None,
                 memory_limit: int = 0, backend: str = "", device_count: int = 1,
                 env: dict[str, str] | None = None):
        pin_device(backend, device_index, device_count)
        apply_process_env(env or {})
        self.worker_id = worker_id
        self.device_index = device_index
        self.log = WorkerLog(worker_id, redirect_stderr=runner != "fake")
        faults.set_plan(fault_plan, memory_limit)
        if runner == "fake":
            from kvsweep.workers.fake_runner import FakeRunner

            self.runner = FakeRunner(fake_cell_seconds)
        else:
            self.runner = UnitRunner(n_threads=n_threads, retry=retry,
                                     speed_flags=device_flags(device_index))
            LogCapture.install().mirror = self.log.write
        self.runner_kind = runner

    def crash_report(self) -> str:
        """The last lines the previous process of this worker wrote before it died."""
        return self.log.crash_report()

    def describe(self) -> dict:
        """The host probe plus where this actor lives; memory figures are current."""
        import ray

        probe = refresh_memory(probe_host()) if self.runner_kind != "fake" else probe_host()
        capabilities = {}
        # what this build runs as K/V caches (cached per build); not on a host joined with
        # --skip-pair-check (SKIP_PAIR_CHECK_ENV in its environment): then nothing is assumed
        if self.runner_kind != "fake" and not os.environ.get(SKIP_PAIR_CHECK_ENV):
            from kvsweep.workers.capabilities import host_capabilities

            capabilities = host_capabilities()
        return {
            "capabilities": capabilities,
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
