"""What every benchmark prints first: the machine, the versions, the command; and a table."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime


def machine_description() -> str:
    """``nproc``, CPU model, torch threads and versions, e.g. for RESULTS.md."""
    import torch

    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs (nproc), {model}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; "
        f"load average at start {load}"
    )


def header(title: str) -> str:
    """Title, date, machine and the exact command, one per line."""
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable), *sys.argv])
    return "\n".join(
        [
            f"# {title}",
            f"date: {datetime.now().strftime('%Y-%m-%d %H:%M')}",
            f"machine: {machine_description()}",
            f"command: {command}",
        ]
    )


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [[str(c) for c in columns]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
