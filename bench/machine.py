"""What every benchmark script prints around its figures: the date, the machine and its load
(figures from a busy machine must say so), and loguru kept to warnings so tables stay clean."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys


def _load() -> str:
    load = os.getloadavg()
    return f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def print_start() -> None:
    print(f"{dt.date.today().isoformat()}, {platform.node()}, {os.cpu_count()} CPUs, load average at start {_load()}\n")


def print_end() -> None:
    print(f"\nload average at the end {_load()}")


def quiet_logs() -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
