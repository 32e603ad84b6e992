"""What else ran on the host while a speed cell was timed, so a busy host is flagged, not trusted.

A demo sweep run while a compiler used both cores recorded tg figures 4 to 30 times lower than
an idle run, with no sign of it in the results. So each speed cell's repetitions are wrapped in
a meter that reads, at their start and end (never inside a timed repetition):

- CPU pressure (Linux PSI, /proc/pressure/cpu "some total", microseconds): the share of the
  window during which some runnable task waited for a CPU. It is what competition for the
  cores llama.cpp times with looks like: a busy loop beside llama.cpp's threads on a full
  host gives a share near 1; a process on a core llama.cpp leaves free gives none. Precise
  for short windows (microseconds).
- Other processes' CPU time (/proc/stat busy ticks minus this process's CPU time), in cores,
  and the hypervisor's steal time, in cores: recorded everywhere /proc exists; with 10 ms
  ticks, imprecise for windows under a fraction of a second.

The cell is flagged `host-busy` when the pressure share exceeds the limit (default 0.25;
environment KVSWEEP_BUSY_LIMIT, "off" to disable); where the kernel has no PSI, when other
processes used more than 0.25 + 0.05 x CPUs cores over a window of at least 0.25 s. macOS has
neither: nothing is recorded or flagged there. GPU hosts: the device's own other users are not
measured yet (docs/measurement.md).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

HOST_BUSY = "host-busy"
# On an idle 2-core host with llama.cpp on both cores, Ray's own processes (driver, raylet)
# gave 0.7-12.6% pressure during timed parts (a demo sweep, 30 cells); a benchmark on both
# cores beside it gave 89-100%. The default sits between, above what the fleet itself causes.
DEFAULT_LIMIT = 0.25
LIMIT_ENV = "KVSWEEP_BUSY_LIMIT"
_TICK = 1.0 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
_MIN_TICK_WINDOW_S = 0.25


def busy_limit() -> float | None:
    """The pressure share above which a speed cell is flagged; None: not flagged."""
    raw = os.environ.get(LIMIT_ENV, "").strip().lower()
    if raw in ("off", "0", "none", "no"):
        return None
    try:
        return float(raw) if raw else DEFAULT_LIMIT
    except ValueError:
        return DEFAULT_LIMIT


def _pressure_us() -> int | None:
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _stat_ticks() -> tuple[int, int] | None:
    """(busy ticks, steal ticks) of all CPUs together."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


@dataclass
class _Sample:
    wall: float
    own: float
    pressure: int | None
    ticks: tuple[int, int] | None

    @classmethod
    def now(cls) -> _Sample:
        return cls(time.monotonic(), time.process_time(), _pressure_us(), _stat_ticks())


@dataclass
class HostLoad:
    """The figures of one window, as attempt columns (None where the host cannot tell)."""

    window_s: float
    cpu_pressure: float | None  # share of the window some task waited for a CPU
    other_cores: float | None  # CPU time of other processes / window
    steal_cores: float | None

    def busy(self, limit: float | None, n_cpus: int | None = None) -> bool:
        if limit is None:
            return False
        if self.cpu_pressure is not None:
            return self.cpu_pressure > limit
        if self.other_cores is not None and self.window_s >= _MIN_TICK_WINDOW_S:
            return self.other_cores > 0.25 + 0.05 * (n_cpus or os.cpu_count() or 1)
        return False

    def columns(self) -> dict:
        return {"host_load_window_s": self.window_s, "host_cpu_pressure": self.cpu_pressure,
                "host_other_cores": self.other_cores, "host_steal_cores": self.steal_cores}


class Meter:
    """Accumulates windows: start() before a repetition's untimed set-up or timed part and
    stop() after it; read() gives the figures over every window so far."""

    def __init__(self) -> None:
        self._start: _Sample | None = None
        self.wall = self.own = 0.0
        self.pressure: int | None = 0
        self.busy_ticks: int | None = 0
        self.steal_ticks: int | None = 0

    def start(self) -> None:
        self._start = _Sample.now()

    def stop(self) -> None:
        a, b = self._start, _Sample.now()
        if a is None:
            return
        self._start = None
        self.wall += b.wall - a.wall
        self.own += b.own - a.own
        if self.pressure is not None:
            self.pressure = None if a.pressure is None or b.pressure is None else self.pressure + b.pressure - a.pressure
        if self.busy_ticks is not None:
            if a.ticks is None or b.ticks is None:
                self.busy_ticks = self.steal_ticks = None
            else:
                self.busy_ticks += b.ticks[0] - a.ticks[0]
                self.steal_ticks += b.ticks[1] - a.ticks[1]

    def read(self) -> HostLoad:
        w = self.wall
        if w <= 0:
            return HostLoad(0.0, None, None, None)
        pressure = None if self.pressure is None else min(1.0, self.pressure / 1e6 / w)
        other = steal = None
        if self.busy_ticks is not None:
            other = max(0.0, (self.busy_ticks * _TICK - self.own) / w)
            steal = self.steal_ticks * _TICK / w
        return HostLoad(w, pressure, other, steal)
