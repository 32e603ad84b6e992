"""Tables for the terminal (`kvsweep status`, `kvsweep workers`, `--dry-run`), drawn by rich.

The callers pass lines on to an `out` function (print, or a test's list), so a table is rendered
to text here rather than printed by a rich Console of its own.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence

from rich.console import Console
from rich.table import Table


def table_lines(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = (),
                indent: int = 2) -> list[str]:
    """The table as lines of plain text: a header line, then one line per row (columns two
    spaces apart, no rules: scripts split the lines on white space); columns in `numeric` are
    right-aligned."""
    right = set(numeric)
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    for i, h in enumerate(headers):
        table.add_column(h, justify="right" if i in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    # as wide as the table wants: a row is never folded onto several lines (logs and pipes
    # have no terminal width, and grep must find a whole row)
    buf = io.StringIO()
    Console(file=buf, width=100_000, color_system=None, highlight=False, soft_wrap=False).print(table)
    return [" " * indent + line.rstrip() for line in buf.getvalue().splitlines() if line.strip()]


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]], out: Callable[[str], None] = print,
                numeric: Iterable[int] = (), indent: int = 2) -> None:
    for line in table_lines(headers, rows, numeric, indent):
        out(line)
