"""Compressed model updates: what a client sends instead of its full weights.

An *update* is the difference between a client's trained weights and the global weights
it was sent. With run-config ``update-compression``:

``"int8"``
    Every floating-point tensor as 8-bit integers ``q`` in ``[-127, 127]`` with one
    float32 scale per tensor, ``scale = max|x| / 127``; ``x ≈ q * scale``. With a
    ``generator`` the rounding is stochastic (``q = floor(x / scale + u)``, ``u``
    uniform on (0, 1)), so the reconstruction is unbiased, ``E[q * scale] = x``, with an
    error below ``scale`` per value; without one it rounds to nearest (error at most
    ``scale / 2``).
``"topk"``
    Per tensor (not globally), the ``ceil(fraction * n)`` values of largest magnitude,
    as int32 flat indices and float32 values; the others are sent as zero.

Tensors that are not floating point (counters) are sent as they are. Under DP this is
post-processing of an update that is already private (DP-SGD ran before it): the
client's (ε, δ) guarantee is unchanged. The stochastic rounding draws its uniforms from
the ``generator`` it is given: on a node with ``noise-source = "secure"`` that is a
:class:`~fedmodel.privacy.secure_randomness.SecureRandomness`, not the public seed.

Pure torch; the records conversion is in :mod:`fedmodel.records`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from fedmodel.privacy.secure_randomness import SecureRandomness

METHODS = ("none", "int8", "topk")
INT8_LEVELS = 127

Randomness = torch.Generator | SecureRandomness


@dataclass(frozen=True)
class CompressedTensor:
    """One tensor of an update, compressed.

    Parameters
    ----------
    shape : tuple of int
        The original tensor's shape.
    dtype : torch.dtype
        The original tensor's dtype (restored by :func:`decompress`).
    parts : dict of str to Tensor
        ``int8``: ``q`` (int8) and ``scale`` (float32, one value); ``topk``: ``indices``
        (int32, flat) and ``values`` (float32); a non-float tensor: ``raw``.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    parts: dict[str, torch.Tensor]


@dataclass(frozen=True)
class CompressedUpdate:
    """A compressed update: the method and one :class:`CompressedTensor` per name."""

    method: str
    tensors: dict[str, CompressedTensor] = field(default_factory=dict)


def topk_count(numel: int, fraction: float) -> int:
    """How many values ``topk`` keeps of a tensor of ``numel`` values: ``ceil(f * n)``."""
    if numel == 0:
        return 0
    return min(numel, max(1, math.ceil(fraction * numel - 1e-9)))


def compress(
    update: Mapping[str, torch.Tensor],
    *,
    method: str,
    fraction: float = 0.1,
    generator: Randomness | None = None,
) -> CompressedUpdate:
    """Compress an update (trained weights minus global weights), tensor by tensor.

    Parameters
    ----------
    update : mapping of str to Tensor
        The update, by array name.
    method : str
        ``"int8"`` or ``"topk"``.
    fraction : float
        ``topk``: the share of each tensor's values kept, in (0, 1].
    generator : torch.Generator or SecureRandomness, optional
        ``int8``: randomness for stochastic rounding; ``None`` rounds to nearest.

    Returns
    -------
    CompressedUpdate
        What :func:`decompress` turns back into an update.
    """
    if method not in ("int8", "topk"):
        raise ValueError(f"method must be 'int8' or 'topk', got {method!r}")
    if method == "topk" and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    tensors = {}
    for name, tensor in update.items():
        tensor = tensor.detach().cpu()
        shape = tuple(tensor.shape)
        if not tensor.is_floating_point():
            parts = {"raw": tensor.clone()}
        elif method == "int8":
            parts = _int8(tensor, generator)
        else:
            parts = _topk(tensor, fraction)
        tensors[name] = CompressedTensor(shape=shape, dtype=tensor.dtype, parts=parts)
    return CompressedUpdate(method=method, tensors=tensors)


def decompress(compressed: CompressedUpdate) -> dict[str, torch.Tensor]:
    """The update back from :func:`compress`; a malformed one raises ``ValueError``.

    Parameters
    ----------
    compressed : CompressedUpdate
        Possibly from an untrusted client: every part is checked (dtype, length, index
        range, finite scale) before use.

    Returns
    -------
    dict of str to Tensor
        The (approximate) update, in each tensor's original shape and dtype.
    """
    if compressed.method not in ("int8", "topk"):
        raise ValueError(f"unknown compression method {compressed.method!r}")
    return {
        name: _decompress_one(name, tensor, compressed.method)
        for name, tensor in compressed.tensors.items()
    }


def _int8(tensor: torch.Tensor, generator: Randomness | None) -> dict[str, torch.Tensor]:
    flat = tensor.reshape(-1).to(torch.float64)
    peak = float(flat.abs().max()) if flat.numel() else 0.0
    scale = peak / INT8_LEVELS if peak > 0 and math.isfinite(peak) else 1.0
    scaled = flat / scale
    if generator is None:
        levels = torch.round(scaled)
    else:
        levels = torch.floor(scaled + _uniforms(generator, flat.numel()))
    q = levels.clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8).reshape(tensor.shape)
    return {"q": q, "scale": torch.tensor([scale], dtype=torch.float32)}


def _uniforms(generator: Randomness, n: int) -> torch.Tensor:
    if isinstance(generator, SecureRandomness):
        return generator.uniform(n)
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _topk(tensor: torch.Tensor, fraction: float) -> dict[str, torch.Tensor]:
    flat = tensor.reshape(-1)
    k = topk_count(flat.numel(), fraction)
    indices = torch.topk(flat.abs(), k, sorted=False).indices if k else flat.new_zeros(0).long()
    indices, _ = torch.sort(indices)
    return {"indices": indices.to(torch.int32), "values": flat[indices].to(torch.float32)}


def _decompress_one(name: str, tensor: CompressedTensor, method: str) -> torch.Tensor:
    numel = math.prod(tensor.shape)
    parts = tensor.parts
    if "raw" in parts:
        raw = parts["raw"]
        if tuple(raw.shape) != tensor.shape:
            raise ValueError(f"array {name!r}: raw part has shape {tuple(raw.shape)}")
        return raw.to(tensor.dtype)
    if not tensor.dtype.is_floating_point:
        raise ValueError(f"array {name!r}: a {tensor.dtype} tensor is sent raw, not {method}")
    if method == "int8":
        q, scale = _part(name, parts, "q", torch.int8), _part(name, parts, "scale", torch.float32)
        if q.numel() != numel or scale.numel() != 1:
            raise ValueError(f"array {name!r}: {q.numel()} int8 values for {numel}, or no scale")
        if not (math.isfinite(float(scale)) and float(scale) > 0):
            raise ValueError(f"array {name!r}: int8 scale must be finite and > 0")
        if q.numel() and int(q.min()) < -INT8_LEVELS:
            raise ValueError(f"array {name!r}: int8 values out of [-127, 127]")
        values = q.reshape(-1).to(torch.float32) * scale.reshape(())
        return values.reshape(tensor.shape).to(tensor.dtype)
    indices = _part(name, parts, "indices", torch.int32).reshape(-1).long()
    values = _part(name, parts, "values", torch.float32).reshape(-1)
    if indices.numel() != values.numel() or indices.numel() > numel:
        raise ValueError(f"array {name!r}: {indices.numel()} indices, {values.numel()} values")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel):
        raise ValueError(f"array {name!r}: indices out of range [0, {numel})")
    if indices.unique().numel() != indices.numel():
        raise ValueError(f"array {name!r}: repeated indices")
    dense = torch.zeros(numel, dtype=torch.float32)
    dense[indices] = values
    return dense.reshape(tensor.shape).to(tensor.dtype)


def _part(
    name: str, parts: Mapping[str, torch.Tensor], key: str, dtype: torch.dtype
) -> torch.Tensor:
    if key not in parts:
        raise ValueError(f"array {name!r} lacks its {key!r} part")
    part = parts[key]
    if part.dtype != dtype:
        raise ValueError(f"array {name!r}: part {key!r} is {part.dtype}, expected {dtype}")
    return part
