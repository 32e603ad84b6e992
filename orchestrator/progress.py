"""Progress of a sweep: cells done / failed / running per host, and an ETA.

On a terminal it is a live table (rich); otherwise (CI, a log file) a log line every 10 s and
one per failure, so long sweeps leave a readable trail. Counters are kept up to date event by
event and the table is redrawn at most `REDRAW_S` apart, so a sweep of many quick cells does
not spend its time drawing (bench/throughput.py --live).
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict

from loguru import logger

from kvsweep import records
from kvsweep.messages import RETRYING_FLAG


class ProgressView:
    REDRAW_S = 0.25  # the live table is redrawn at most this often (and once at the end)

    def __init__(self, total: int, already_done: int = 0, live: bool | None = None):
        self.total = total
        self.already_done = already_done
        self.started = time.monotonic()
        self.final: dict[str, tuple[str, str]] = {}  # cell id -> (host, latest final status)
        self._per_host: dict[str, Counter] = defaultdict(Counter)  # host -> status -> cells (of final)
        self._last_draw = 0.0
        self.running: dict[str, str] = {}  # worker -> what it runs
        self.worker_host: dict[str, str] = {}  # worker -> its host, to count running per host
        self.live_mode = sys.stderr.isatty() if live is None else live
        self._live = None
        self._last_log = 0.0

    # -- events from the scheduler ---------------------------------------------------------
    def on_event(self, kind: str, slot, payload) -> None:
        host = slot.host if slot is not None else "-"
        if slot is not None:
            self.worker_host[slot.worker_id] = host
        if kind == "dispatched":
            unit = payload
            self.running[slot.worker_id] = f"{unit.kind} x{len(unit.cells)} ({unit.cells[0].model_name})"
        elif kind == "idle":
            self.running.pop(slot.worker_id, None)
        elif kind == "progress":
            ev = payload
            self.running[slot.worker_id] = f"quality chunk {ev.done}/{ev.total}"
        elif kind == "finished":
            cell, outcome = payload
            if RETRYING_FLAG in outcome.flags:
                logger.warning(f"{host}: {cell.test_name} {cell.type_k}/{cell.type_v}: out of memory, retrying")
                return
            before = self.final.get(cell.cell_id)
            if before is not None:  # a cell run again: its latest final status counts
                self._per_host[before[0]][before[1]] -= 1
            self.final[cell.cell_id] = (host, outcome.status)
            self._per_host[host][outcome.status] += 1
            if outcome.status not in (records.OK, records.SKIPPED):
                logger.warning(
                    f"{host}: {cell.model_name} {cell.test_name} K={cell.type_k} V={cell.type_v}: "
                    f"{outcome.status} ({outcome.error_class}: {outcome.error_message.splitlines()[0] if outcome.error_message else ''})"
                )
        self.refresh()

    # -- rendering -------------------------------------------------------------------------
    @property
    def done(self) -> Counter:
        out: Counter = Counter()
        for counts in self._per_host.values():
            out.update(counts)
        return +out  # without zero counts

    @property
    def per_host(self) -> dict[str, Counter]:
        return {host: +counts for host, counts in self._per_host.items() if +counts}

    @property
    def finished(self) -> int:
        return len(self.final)

    def eta_s(self) -> float | None:
        n = self.finished
        left = self.total - self.already_done - n
        if n == 0 or left <= 0:
            return None
        return (time.monotonic() - self.started) / n * left

    def line(self) -> str:
        n = self.already_done + self.finished
        done = self.done
        failed = sum(v for k, v in done.items() if k != records.OK)
        eta = self.eta_s()
        eta_text = f", ETA {_fmt(eta)}" if eta is not None else ""
        return (f"{n}/{self.total} cells ({done[records.OK]} ok, {failed} not ok this session), "
                f"{len(self.running)} running, {_fmt(time.monotonic() - self.started)} elapsed{eta_text}")

    def _table(self):
        from rich.table import Table

        t = Table(title=self.line(), title_justify="left")
        for col in ("host", "ok", "failed", "skipped", "running"):
            t.add_column(col, justify="left" if col in ("host", "running") else "right")
        per_host = self.per_host
        running_per_host = Counter(self.worker_host.get(w, "-") for w in self.running)
        for host in sorted(set(per_host) | set(running_per_host)):
            c = per_host.get(host, Counter())
            failed = sum(v for k, v in c.items() if k not in (records.OK, records.SKIPPED))
            t.add_row(host, str(c[records.OK]), str(failed), str(c[records.SKIPPED]),
                      f"{running_per_host[host]} worker(s)" if running_per_host[host] else "")
            for worker, what in sorted(self.running.items()):
                if self.worker_host.get(worker, "-") == host:
                    t.add_row(f"  {worker}", "", "", "", what)
        return t

    def start(self) -> None:
        if self.live_mode:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(stderr=True), refresh_per_second=4)
            self._live.start()
        else:
            logger.info(self.line())

    def refresh(self) -> None:
        now = time.monotonic()
        if self._live is not None:
            if now - self._last_draw >= self.REDRAW_S:
                self._last_draw = now
                self._live.update(self._table())
        elif now - self._last_log >= 10:
            self._last_log = now
            logger.info(self.line())

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._table())  # the final state, whatever the redraw timer said
            self._live.stop()
            self._live = None
        logger.info(self.line())


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
