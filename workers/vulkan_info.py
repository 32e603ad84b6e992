"""What the Vulkan loader says about this host's devices: name, type, driver, memory.

ggml's device registry gives a Vulkan device's name and memory, not what kind of device it is,
and ggml-vulkan skips CPU-type devices (Mesa's lavapipe/llvmpipe, SwiftShader) unless
GGML_VK_VISIBLE_DEVICES names them. A speed figure from such a device says nothing about a GPU,
so the probe asks the loader itself (vkGetPhysicalDeviceProperties2, with the driver
properties of Vulkan 1.2), through ctypes: no Vulkan SDK or Python binding needed. Returns
nothing where there is no loader or no device.

    python -m kvsweep.workers.vulkan_info        prints the devices
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import asdict, dataclass

# VkPhysicalDeviceType
DEVICE_TYPES = {0: "other", 1: "integrated-gpu", 2: "discrete-gpu", 3: "virtual-gpu", 4: "cpu"}
_STYPE_APPLICATION_INFO = 0
_STYPE_INSTANCE_CREATE_INFO = 1
_STYPE_PHYSICAL_DEVICE_PROPERTIES_2 = 1000059001
_STYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES = 1000196000
_MEMORY_HEAP_DEVICE_LOCAL = 0x1


@dataclass(frozen=True)
class VulkanDevice:
    index: int  # in the loader's order: what GGML_VK_VISIBLE_DEVICES counts in
    name: str  # e.g. "llvmpipe (LLVM 15.0.6, 256 bits)", "AMD Radeon RX 7900 XTX (RADV NAVI31)"
    device_type: str  # cpu | integrated-gpu | discrete-gpu | virtual-gpu | other
    driver: str  # e.g. "llvmpipe Mesa 22.3.6 (LLVM 15.0.6)"
    api_version: str
    memory: int  # bytes of device-local heaps

    @property
    def cpu_type(self) -> bool:
        return self.device_type == "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


class _AppInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("pApplicationName", ctypes.c_char_p),
                ("applicationVersion", ctypes.c_uint32), ("pEngineName", ctypes.c_char_p),
                ("engineVersion", ctypes.c_uint32), ("apiVersion", ctypes.c_uint32)]


class _InstanceInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("flags", ctypes.c_uint32),
                ("pApplicationInfo", ctypes.POINTER(_AppInfo)), ("enabledLayerCount", ctypes.c_uint32),
                ("ppEnabledLayerNames", ctypes.c_void_p), ("enabledExtensionCount", ctypes.c_uint32),
                ("ppEnabledExtensionNames", ctypes.c_void_p)]


class _DriverProperties(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("driverID", ctypes.c_uint32),
                ("driverName", ctypes.c_char * 256), ("driverInfo", ctypes.c_char * 256),
                ("conformanceVersion", ctypes.c_uint8 * 4)]


class _Properties2Head(ctypes.Structure):
    # VkPhysicalDeviceProperties2 up to the start of VkPhysicalDeviceProperties' deviceName; the
    # rest (pipelineCacheUUID, limits, sparseProperties: under 1 KiB) lies in the padding
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("apiVersion", ctypes.c_uint32),
                ("driverVersion", ctypes.c_uint32), ("vendorID", ctypes.c_uint32), ("deviceID", ctypes.c_uint32),
                ("deviceType", ctypes.c_int), ("deviceName", ctypes.c_char * 256), ("rest", ctypes.c_uint8 * 4096)]


class _MemoryHeap(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint64), ("flags", ctypes.c_uint32)]


class _MemoryProperties(ctypes.Structure):
    _fields_ = [("memoryTypeCount", ctypes.c_uint32), ("memoryTypes", ctypes.c_uint32 * 64),
                ("memoryHeapCount", ctypes.c_uint32), ("memoryHeaps", _MemoryHeap * 16)]


def _loader() -> ctypes.CDLL | None:
    for name in ("libvulkan.so.1", ctypes.util.find_library("vulkan") or "", "libvulkan.dylib"):
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    return None


def _version(v: int) -> str:
    return f"{(v >> 22) & 0x7F}.{(v >> 12) & 0x3FF}.{v & 0xFFF}"


def devices() -> list[VulkanDevice]:
    vk = _loader()
    if vk is None:
        return []
    app = _AppInfo(_STYPE_APPLICATION_INFO, None, b"kvsweep", 1, b"kvsweep", 1, (1 << 22) | (2 << 12))
    info = _InstanceInfo(_STYPE_INSTANCE_CREATE_INFO, None, 0, ctypes.pointer(app), 0, None, 0, None)
    instance = ctypes.c_void_p()
    if vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance)) != 0:
        return []
    try:
        count = ctypes.c_uint32(0)
        vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None)
        handles = (ctypes.c_void_p * count.value)()
        vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), handles)
        out = []
        for i, handle in enumerate(handles[: count.value]):
            driver = _DriverProperties(_STYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES, None)
            props = _Properties2Head(_STYPE_PHYSICAL_DEVICE_PROPERTIES_2, ctypes.cast(ctypes.pointer(driver), ctypes.c_void_p))
            vk.vkGetPhysicalDeviceProperties2(ctypes.c_void_p(handle), ctypes.byref(props))
            memory = _MemoryProperties()
            vk.vkGetPhysicalDeviceMemoryProperties(ctypes.c_void_p(handle), ctypes.byref(memory))
            local = sum(memory.memoryHeaps[h].size for h in range(min(memory.memoryHeapCount, 16))
                        if memory.memoryHeaps[h].flags & _MEMORY_HEAP_DEVICE_LOCAL)
            out.append(VulkanDevice(
                index=i,
                name=props.deviceName.decode(errors="replace"),
                device_type=DEVICE_TYPES.get(props.deviceType, "other"),
                driver=f"{driver.driverName.decode(errors='replace')} {driver.driverInfo.decode(errors='replace')}".strip(),
                api_version=_version(props.apiVersion),
                memory=int(local),
            ))
        return out
    finally:
        vk.vkDestroyInstance(instance, None)


def visible_indices(all_devices: list[VulkanDevice]) -> list[int]:
    """The loader indices ggml-vulkan uses: GGML_VK_VISIBLE_DEVICES when set, else every
    device that is not CPU-type (ggml-vulkan skips those by default)."""
    raw = os.environ.get("GGML_VK_VISIBLE_DEVICES")
    if raw is not None:
        return [int(x) for x in raw.split(",") if x.strip().isdigit()]
    return [d.index for d in all_devices if not d.cpu_type]


if __name__ == "__main__":
    for d in devices():
        print(d)
