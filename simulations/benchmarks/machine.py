"""Helpers shared by the benchmarks (not a benchmark itself).

What every benchmark prints first (the machine, the versions, the command), a table, where
optional inputs live (the MNIST folder) and the one-line ``skipped: <reason>`` that a smoke
run prints when such an optional input is genuinely absent.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR_ENV = "FEDMODEL_DATA_DIR"
# The folder beside the repository that holds the downloaded datasets on the development
# machines (``fedmodel download mnist --data-dir ...``); elsewhere set FEDMODEL_DATA_DIR.
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
SMOKE_HELP = "a few seconds' tiny run that fails (exit != 0) if the benchmarked code is broken"


def fedmodel_command(*args: str) -> list[str]:
    """The command line of ``fedmodel ARGS`` run by this Python.

    It calls the entry point that ``[project.scripts]`` names (``simulations.cli:main``),
    so it works whether or not the ``fedmodel`` script is installed.
    """
    return [
        sys.executable,
        "-u",
        "-c",
        "import sys; from simulations.cli import main; sys.exit(main())",
        *args,
    ]


def default_data_dir() -> str:
    """Where MNIST's ``mnist.npz`` is looked for: ``$FEDMODEL_DATA_DIR``, else ../shared/data."""
    return os.environ.get(DATA_DIR_ENV) or str(DEFAULT_DATA_DIR)


def data_dir_help() -> str:
    return (
        f"folder with mnist.npz (default: ${DATA_DIR_ENV}, else {DEFAULT_DATA_DIR}; "
        "create it with `fedmodel download mnist --data-dir DIR`)"
    )


def has_mnist(data_dir: str) -> bool:
    return Path(data_dir, "mnist.npz").is_file()


def skipped(reason: str) -> int:
    """Say why a smoke run did nothing, on the one line the smoke runner reads; exit code 0.

    Only for a genuinely absent optional input (pfl-research's environment, a dataset
    file): anything that is there and fails must fail the run.
    """
    print(f"skipped: {reason}", flush=True)
    return 0


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
    # Run with -m, sys.argv[0] is the module's absolute path: name the module instead.
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = ["-m", spec.name] if spec is not None and spec.name else sys.argv[:1]
    words = [os.path.relpath(sys.executable), *program, *sys.argv[1:]]
    command = " ".join(shlex.quote(a) for a in words)
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


def mnist_subset(
    data_dir: str, folder: Path, *, train: int, test: int, seed: int, flatten: bool
) -> dict[str, Any]:
    """Seeded MNIST subsets written as custom-data ``.npz`` files; the run-config keys.

    Pixels scaled to [0, 1], flattened to 784 features or kept as ``1x28x28`` images.
    """
    with np.load(Path(data_dir) / "mnist.npz") as arrays:
        rng = np.random.default_rng(seed)
        picked = {}
        for split, count in (("train", train), ("test", test)):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            index = np.sort(rng.choice(len(y), size=count, replace=False))
            images = x[index].reshape(count, -1) if flatten else x[index][:, None]
            pixels = (images / np.float32(255.0)).astype(np.float32)
            path = folder / f"mnist-{split}-{count}.npz"
            np.savez(path, x=pixels, y=y[index].astype(np.int64))
            picked[split] = str(path)
    return {
        "dataset": "custom",
        "data-path": picked["train"],
        "test-data": picked["test"],
        "num-classes": 10,
    }
