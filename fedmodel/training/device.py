"""Which torch device a process trains and evaluates on.

One device per process: the run config (or a node's own config) names it as ``"auto"``,
``"cpu"``, ``"cuda"`` or ``"cuda:N"``, and :func:`resolve_device` turns that into a
:class:`torch.device`, refusing CUDA clearly where this process has none. ``"auto"``
takes the current CUDA device when ``torch.cuda.is_available()`` and the CPU otherwise,
so a CPU-only machine runs exactly what it ran before this option existed.
"""

from __future__ import annotations

import re

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def check_device_spec(spec: str) -> None:
    """Raise ``ValueError`` unless ``spec`` is one of ``auto``, ``cpu``, ``cuda``, ``cuda:N``.

    Only the spelling is checked; whether this process has that device is
    :func:`resolve_device`'s question.
    """
    if not isinstance(spec, str) or not (
        spec in ("auto", "cpu", "cuda") or _CUDA_INDEX.fullmatch(spec)
    ):
        raise ValueError(
            f"device {spec!r} is not one of 'auto', 'cpu', 'cuda' or 'cuda:N' (N = 0, 1, ...)"
        )


def resolve_device(spec: str) -> torch.device:
    """The :class:`torch.device` that ``spec`` names on this process.

    Parameters
    ----------
    spec : str
        ``"auto"`` (CUDA if ``torch.cuda.is_available()``, else the CPU), ``"cpu"``,
        ``"cuda"`` (the current CUDA device) or ``"cuda:N"``.

    Raises
    ------
    ValueError
        The spelling is none of those, CUDA is asked for where this torch build or
        machine has none, or ``N`` is not below ``torch.cuda.device_count()``.
    """
    check_device_spec(spec)
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if not torch.cuda.is_available():
        build = torch.version.cuda
        why = (
            f"this torch {torch.__version__} is a CPU-only build (README, 'GPU', has the "
            "install command for a CUDA build)"
            if build is None
            else f"torch {torch.__version__} (CUDA {build}) finds no usable CUDA device"
        )
        raise ValueError(f"device {spec!r} needs CUDA, but {why}; use 'auto' or 'cpu'")
    match = _CUDA_INDEX.fullmatch(spec)
    if match:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise ValueError(
                f"device {spec!r} is out of range: this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}"
            )
        return torch.device("cuda", index)
    return torch.device("cuda")
