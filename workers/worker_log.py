"""A log file per worker that outlives the worker's process, so a crash row can say why.

When llama.cpp aborts (GGML_ABORT, GGML_ASSERT) or segfaults, the process dies with its
memory: the in-memory log capture is gone, and Ray reports only that a socket closed. So each
worker writes, unbuffered, into ~/.cache/kvsweep/worker-logs/WORKER_ID.log (KVSWEEP_CACHE_DIR
moves it): llama.cpp's log lines, its C-level stderr (where GGML_ABORT writes its message) and
Python's faulthandler traceback on SIGSEGV / SIGABRT. When Ray restarts the worker, the new
process reads what its predecessor wrote after its start marker and hands it to the
orchestrator, which puts it into the crash row (log_tail).
"""

from __future__ import annotations

import datetime as dt
import faulthandler
import os
from pathlib import Path

from kvsweep.paths import cache_dir

_MARKER = "=== kvsweep worker "
_KEEP_BYTES = 256 * 1024  # what survives trimming: the file never grows without bound
_TRIM_AT = 1024 * 1024


class WorkerLog:
    def __init__(self, worker_id: str, redirect_stderr: bool = True):
        self.path = cache_dir() / "worker-logs" / f"{worker_id}.log"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.previous = _after_last_marker(self.path)
        _trim(self.path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.write(f"{_MARKER}{worker_id} pid {os.getpid()} started {now} ===")
        if redirect_stderr:
            os.dup2(self.fd, 2)  # C stderr (GGML_ABORT's message) lands here
        self._fault_file = open(self.path, "a")  # noqa: SIM115 - kept open for faulthandler
        faulthandler.enable(self._fault_file, all_threads=True)

    def write(self, line: str) -> None:
        os.write(self.fd, (line.rstrip("\n") + "\n").encode("utf-8", errors="replace"))

    def crash_report(self, max_lines: int = 60) -> str:
        """What the previous process of this worker wrote before it died (last lines)."""
        return "\n".join(self.previous.splitlines()[-max_lines:])


def _after_last_marker(path: Path) -> str:
    try:
        text = path.read_bytes()[-_KEEP_BYTES:].decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    index = text.rfind(_MARKER)
    if index < 0:
        return text
    rest = text[index:].split("\n", 1)
    return rest[1] if len(rest) > 1 else ""


def _trim(path: Path) -> None:
    try:
        if path.stat().st_size > _TRIM_AT:
            tail = path.read_bytes()[-_KEEP_BYTES:]
            path.write_bytes(tail)
    except FileNotFoundError:
        pass


def reason_line(report: str) -> str:
    """The most telling line of a crash report, for the error message."""
    for needle in ("GGML_ASSERT", "GGML_ABORT", "Fatal Python error", "error:", "Aborted"):
        for line in reversed(report.splitlines()):
            if needle in line:
                return line.strip()
    return ""
