"""What a host has: backends and devices of this llama-cpp-python build, memory, versions.

Read through ggml's device registry (the same one llama.cpp uses to place layers), so what is
reported is what llama.cpp will use, not what the OS happens to show.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import socket
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from importlib import metadata

import kvsweep

# ggml_backend_dev_type
_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


@dataclass
class Device:
    index: int
    name: str  # ggml device name, e.g. CPU, CUDA0, Metal, Vulkan0
    description: str  # e.g. "NVIDIA H100 80GB HBM3"
    kind: str  # cpu | gpu | igpu | accel
    backend: str  # ggml backend registry name: CPU, CUDA, Metal, Vulkan
    memory_total: int
    memory_free: int
    # Vulkan devices: what the loader says (workers/vulkan_info.py): cpu | integrated-gpu |
    # discrete-gpu | virtual-gpu | other, and the driver; '' where not known
    device_type: str = ""
    driver: str = ""

    @property
    def cpu_type(self) -> bool:
        """A device that computes on the CPU (Mesa's lavapipe): its speed says nothing of a GPU."""
        return self.device_type == "cpu"


@dataclass
class HostProbe:
    host: str
    platform: str
    cpu_info: str
    physical_cores: int
    ram_total: int
    ram_free: int
    backends: str  # llama-bench's field: non-CPU backends joined by ",", or "CPU"
    primary_backend: str  # the backend kvsweep offloads to (first GPU's, else CPU)
    unified_memory: bool  # Apple Silicon: GPU shares system RAM
    devices: list[Device] = field(default_factory=list)
    kvsweep_version: str = kvsweep.__version__
    llama_cpp_python_version: str = ""
    build_commit: str = ""  # ggml_commit(): the vendored llama.cpp commit (else the build's own record)
    build_name: str = "mainline"  # mainline, or the fork / label scripts/build_worker.py recorded
    build_fingerprint: str = ""  # sha256 of libggml-base: tells builds apart whatever their commit
    build_cmake_args: str = ""  # the CMake flags the build recorded ('' when unknown)
    ggml_version: str = ""
    llama_version: str = ""
    system_info: str = ""
    driver_version: str = ""  # GPU driver where the OS tells it (NVIDIA, AMD), macOS version on Apple
    # every Vulkan device the loader lists, ggml-vulkan's or not (it skips CPU-type ones unless
    # GGML_VK_VISIBLE_DEVICES names them): for the hint `kvsweep worker join` gives
    vulkan_devices: list[dict] = field(default_factory=list)

    @property
    def gpu_devices(self) -> list[Device]:
        return [d for d in self.devices if d.kind != "cpu"]

    @property
    def gpu_info(self) -> str:
        """llama-bench's gpu_info: GPU descriptions joined by ', '."""
        return ", ".join(d.description for d in self.gpu_devices)

    def default_host_class(self) -> str:
        dev = self.gpu_devices[0].description if self.gpu_devices else self.cpu_info
        return f"{self.primary_backend.lower()}-{slug(dev)}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HostProbe:
        data = dict(data)
        data["devices"] = [Device(**d) for d in data.get("devices", [])]
        # a probe another kvsweep version published may have fields this one does not know
        data = {k: v for k, v in data.items() if k in {f.name for f in fields(cls)}}
        return cls(**data)


def slug(text: str) -> str:
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def bundled_lib_path(name: str) -> str:
    """The file of one of llama-cpp-python's bundled libraries, by its stem: "ggml", "ggml-base"."""
    import llama_cpp

    ext = "dylib" if platform.system() == "Darwin" else "so"
    return os.path.join(os.path.dirname(llama_cpp.__file__), "lib", f"lib{name}.{ext}")


def bundled_lib(name: str) -> ctypes.CDLL:
    return ctypes.CDLL(bundled_lib_path(name))


BUILD_INFO = "kvsweep_build.json"  # what scripts/build_worker.py puts inside the llama_cpp package


def build_info() -> dict:
    """The build's own description, when scripts/build_worker.py made it: name (mainline, a
    fork, a backend label), the tree's commit, the bindings release, the CMake flags."""
    import llama_cpp

    path = os.path.join(os.path.dirname(llama_cpp.__file__), BUILD_INFO)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _describe_vulkan(devices: list[Device], vulkan: list) -> None:
    """Give ggml's Vulkan devices the loader's type and driver: the n-th Vulkan device of ggml
    is the n-th of the loader's visible ones (GGML_VK_VISIBLE_DEVICES, or every non-CPU one)."""
    from kvsweep.workers.vulkan_info import visible_indices

    by_index = {d.index: d for d in vulkan}
    visible = [by_index[i] for i in visible_indices(vulkan) if i in by_index]
    ours = [d for d in devices if d.backend == "Vulkan"]
    for dev, vk in zip(ours, visible):
        if vk.name == dev.description or vk.name.startswith(dev.description) or dev.description.startswith(vk.name):
            dev.device_type, dev.driver = vk.device_type, vk.driver


def _ggml_devices() -> list[Device]:
    ggml, base = bundled_lib("ggml"), bundled_lib("ggml-base")
    ggml.ggml_backend_load_all.restype = None
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(base, fn).restype = ctypes.c_char_p
        getattr(base, fn).argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_type.restype = ctypes.c_int
    base.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    base.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    base.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_name.restype = ctypes.c_char_p
    base.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]

    import llama_cpp

    llama_cpp.llama_backend_init()  # loads the backends llama.cpp itself will use
    devices = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        reg = base.ggml_backend_dev_backend_reg(dev)
        devices.append(
            Device(
                index=i,
                name=base.ggml_backend_dev_name(dev).decode(),
                description=base.ggml_backend_dev_description(dev).decode(),
                kind=_DEVICE_TYPES.get(base.ggml_backend_dev_type(dev), "unknown"),
                backend=base.ggml_backend_reg_name(reg).decode() if reg else "",
                memory_total=int(total.value),
                memory_free=int(free.value),
            )
        )
    return devices


def _registry_backends() -> str:
    """llama-bench's `backends` (test::get_backend): the names of ggml's backend registries
    except CPU (so BLAS counts, as in llama-bench), "RPC" when an RPC registry has devices,
    joined by ","; "CPU" when nothing else is there."""
    ggml, base = bundled_lib("ggml"), bundled_lib("ggml-base")
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    ggml.ggml_backend_reg_get.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    base.ggml_backend_reg_name.restype = ctypes.c_char_p
    base.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    base.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    names, rpc = [], False
    for i in range(ggml.ggml_backend_reg_count()):
        reg = ggml.ggml_backend_reg_get(i)
        name = base.ggml_backend_reg_name(reg).decode()
        if name.startswith("RPC"):
            rpc = rpc or base.ggml_backend_reg_dev_count(reg) > 0
        elif name != "CPU":
            names.append(name)
    return ",".join(names + (["RPC"] if rpc else [])) or "CPU"


def _build_strings() -> tuple[str, str, str, str]:
    import llama_cpp

    base = bundled_lib("ggml-base")
    base.ggml_commit.restype = ctypes.c_char_p
    base.ggml_version.restype = ctypes.c_char_p
    return (
        base.ggml_commit().decode(),
        base.ggml_version().decode(),
        llama_cpp.llama_version().decode() if hasattr(llama_cpp, "llama_version") else "",
        llama_cpp.llama_print_system_info().decode().strip(),
    )


def _cpu_info() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int:
    try:
        with open("/proc/cpuinfo") as f:
            pairs = set()
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    pairs.add((phys, core))
            if pairs:
                return len(pairs)
    except OSError:
        pass
    return os.cpu_count() or 1


def _ram() -> tuple[int, int]:
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0]) * 1024
        return info.get("MemTotal", 0), info.get("MemAvailable", info.get("MemFree", 0))
    except OSError:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total, total


def driver_version() -> str:
    """The GPU driver's version where the OS exposes it without extra tools; '' elsewhere."""
    try:  # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 ..."
        with open("/proc/driver/nvidia/version") as f:
            m = re.search(r"Kernel Module\s+(\S+)", f.read())
            if m:
                return f"nvidia {m.group(1)}"
    except OSError:
        pass
    try:
        with open("/sys/module/amdgpu/version") as f:
            return f"amdgpu {f.read().strip()}"
    except OSError:
        pass
    if platform.system() == "Darwin":  # Metal ships with the OS
        return f"macOS {platform.mac_ver()[0]}"
    return ""


# Environment variables that change what llama.cpp computes or how fast: read by llama.cpp or
# ggml themselves (LLAMA_ATTN_ROT_DISABLE, GGML_CPU_DISABLE_FUSION, GGML_SCHED_*, ...), by
# forks (TurboQuant's TURBO_LAYER_ADAPTIVE, TURBO_AUTO_ASYMMETRIC), by the OpenMP runtime
# ggml's CPU backend uses, or choosing devices.
KNOB_PREFIXES = ("LLAMA_", "GGML_", "OMP_", "KMP_", "GOMP_", "TURBO_")
KNOB_NAMES = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
              "CUDA_LAUNCH_BLOCKING", "GPU_DEVICE_ORDINAL")
_NOT_KNOBS = re.compile(r"TOKEN|SECRET|PASSWORD|KEY$|CREDENTIAL", re.IGNORECASE)


def effective_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The result-changing knobs set in this process now (what llama.cpp will read)."""
    environ = os.environ if environ is None else environ
    return {
        k: v for k, v in sorted(environ.items())
        if (k.startswith(KNOB_PREFIXES) or k in KNOB_NAMES) and not _NOT_KNOBS.search(k)
    }


def run_facts(model_path: str) -> dict:
    """Attempt columns about the process and files a cell ran with, read when it runs."""
    env = effective_env()
    return {
        "env_effective": json.dumps(env, sort_keys=True),
        "llama_attn_rot_disable": env.get("LLAMA_ATTN_ROT_DISABLE", ""),
        "model_file_bytes": os.path.getsize(model_path) if os.path.exists(model_path) else None,
        # Ray's default for workers is 15: timings then lose the CPU to any other process
        "worker_niceness": os.nice(0),
    }


@lru_cache(maxsize=1)
def probe_host() -> HostProbe:
    from kvsweep.workers import vulkan_info

    devices = _ggml_devices()
    vulkan = vulkan_info.devices() if any(d.backend == "Vulkan" for d in devices) or \
        "Vulkan" in _registry_backends() else []
    _describe_vulkan(devices, vulkan)
    gpus = [d for d in devices if d.kind != "cpu"]
    from kvsweep.workers.ggml_types import build_fingerprint

    commit, ggml_version, llama_version, system_info = _build_strings()
    info = build_info()
    if info.get("commit") and (not commit or commit.startswith("unknown")):
        commit = info["commit"][:7]  # a tree without .git: the commit the build recorded
    ram_total, ram_free = _ram()
    try:
        llama_cpp_python_version = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        llama_cpp_python_version = ""
    return HostProbe(
        host=socket.gethostname(),
        platform=f"{platform.system()} {platform.release()} {platform.machine()}",
        cpu_info=_cpu_info(),
        physical_cores=_physical_cores(),
        ram_total=ram_total,
        ram_free=ram_free,
        backends=_registry_backends(),
        primary_backend=gpus[0].backend if gpus else "CPU",
        unified_memory=any(d.backend == "Metal" for d in gpus),
        devices=devices,
        llama_cpp_python_version=llama_cpp_python_version,
        build_commit=commit,
        build_name=info.get("name") or "mainline",
        build_fingerprint=build_fingerprint(),
        build_cmake_args=info.get("cmake_args", ""),
        ggml_version=ggml_version,
        llama_version=llama_version,
        system_info=system_info,
        driver_version=driver_version() or next((d.driver for d in gpus if d.driver), ""),
        vulkan_devices=[v.to_dict() for v in vulkan],
    )


def refresh_memory(probe: HostProbe) -> HostProbe:
    """The same probe with current free memory (devices' and RAM)."""
    fresh = {d.index: d for d in _ggml_devices()}
    for dev in probe.devices:
        if dev.index in fresh:
            dev.memory_free = fresh[dev.index].memory_free
    probe.ram_total, probe.ram_free = _ram()
    return probe
