"""Cryptographically secure randomness for DP-SGD: Gaussian noise and Poisson sampling.

DP-SGD is private against the server only if the server cannot regenerate the noise a
client added, nor the batches it sampled. Torch generators seeded from public values
(round, client id, a run seed) give it exactly that power. :class:`SecureRandomness`
draws everything from ChaCha20 (RFC 8439) keyed with 32 bytes from ``os.urandom``, a key
that lives only in the client's process and is never written, logged or sent.

Why the conversions below are written by hand: no maintained library turns a CSPRNG
byte stream into torch normals or Bernoulli masks. Torch's own generators are Mersenne
Twister (CPU) and Philox (CUDA), neither cryptographic: their whole stream follows from
the seed (and Mersenne Twister's state from 624 of its outputs). Opacus's
``secure_mode`` relies on ``torchcsprng``, which is archived and not built for current
torch. So this module keeps the cryptography to the ``cryptography`` package (OpenSSL's
ChaCha20) and does only three small, vectorised conversions itself: 64-bit words to
uniforms, uniforms to Bernoulli masks, uniforms to Gaussians (Box-Muller).
"""

from __future__ import annotations

import math
import operator
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_KEY_BYTES = 32
"""ChaCha20 key length (256 bits)."""

_NONCE = bytes(16)
"""The 16-byte ``cryptography`` nonce: a 32-bit little-endian block counter starting at
0, then RFC 8439's 96-bit nonce. All zero is safe because every instance that is not a
test has a fresh random key, so no (key, nonce) pair is ever used twice."""

_MAX_KEYSTREAM_BYTES = 64 * 2**32
"""The 32-bit block counter runs out after 2**32 blocks of 64 bytes (256 GiB); an
instance refuses to go past that rather than let the keystream wrap around."""

_TWO_POW_MINUS_53 = 2.0**-53
_LARGEST_BELOW_ONE = 1.0 - _TWO_POW_MINUS_53


class SecureRandomness:
    """Random draws from ChaCha20 (RFC 8439) keyed from ``os.urandom``.

    One instance holds one ChaCha20 keystream; every draw consumes the next bytes of it,
    so consecutive calls never repeat and nothing can be replayed from public values.
    An instance is not thread-safe: give each thread its own.

    Parameters
    ----------
    key : bytes or None, optional
        The 32-byte ChaCha20 key. ``None`` (the default, and the only value production
        code may use) draws it from ``os.urandom``. A given key exists for tests only:
        it makes the stream reproducible, which is exactly what must never happen in a
        deployed client.

    Raises
    ------
    TypeError
        If ``key`` is neither ``None`` nor bytes.
    ValueError
        If ``key`` is not 32 bytes long.

    Notes
    -----
    The nonce is all zero. That is safe because the key is fresh and random for every
    instance (two 256-bit random keys colliding is negligible), and it keeps a test key's
    stream fixed.
    """

    name = "secure"

    def __init__(self, *, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(_KEY_BYTES)
        elif not isinstance(key, bytes | bytearray):
            raise TypeError(f"key must be bytes or None, got {type(key).__name__}")
        if len(key) != _KEY_BYTES:
            raise ValueError(f"key must be {_KEY_BYTES} bytes, got {len(key)}")
        cipher = Cipher(algorithms.ChaCha20(bytes(key), _NONCE), mode=None)
        self._encryptor = cipher.encryptor()
        self._used = 0

    def __repr__(self) -> str:
        # Never show the key.
        return f"{type(self).__name__}(keystream bytes used={self._used})"

    def _keystream(self, nbytes: int) -> bytes:
        """The next ``nbytes`` of the keystream (ChaCha20 of zero bytes)."""
        if self._used + nbytes > _MAX_KEYSTREAM_BYTES:
            raise RuntimeError("ChaCha20 keystream exhausted; use a new SecureRandomness")
        self._used += nbytes
        return self._encryptor.update(bytes(nbytes))

    def _uniform_tensor(self, n: int) -> torch.Tensor:
        # 53 random bits per value (the top bits of a 64-bit word), centred in their
        # 2**-53 cell, so never 0. Above 0.5 doubles are 2**-53 apart, the midpoint
        # rounds to even and the single top word would round to 1.0 (probability
        # 2**-53): it is mapped to the largest double below 1, keeping values in (0, 1).
        # numpy reads the (read-only) keystream bytes and shifts unsigned words; torch
        # does the in-place float work (its vectorised kernels are the faster ones).
        words = np.frombuffer(self._keystream(8 * n), dtype="<u8")
        values = torch.from_numpy((words >> np.uint64(11)).astype(np.float64))
        return values.add_(0.5).mul_(_TWO_POW_MINUS_53).clamp_(max=_LARGEST_BELOW_ONE)

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` independent uniforms on the open interval (0, 1).

        Parameters
        ----------
        n : int
            How many values, ``n >= 0``.

        Returns
        -------
        torch.Tensor
            float64, shape ``(n,)``, every value strictly between 0 and 1, on a grid of
            2**-53 (53 random bits each).
        """
        n = _count(n)
        return self._uniform_tensor(n)

    def bernoulli(self, n: int, p: float) -> torch.Tensor:
        """``n`` independent Bernoulli(``p``) draws, e.g. a Poisson-sampling mask.

        Parameters
        ----------
        n : int
            How many values, ``n >= 0``.
        p : float
            Probability of ``True``, ``0 <= p <= 1``; ``p = 0`` gives all ``False`` and
            ``p = 1`` all ``True`` (uniforms are never 0 nor 1).

        Returns
        -------
        torch.Tensor
            bool, shape ``(n,)``: ``uniform(n) < p``.
        """
        n = _count(n)
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        return self._uniform_tensor(n) < p

    def gaussian(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        std: float,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Independent N(0, ``std``**2) noise of ``shape``, hardened against float attacks.

        Each value is the sum of 4 independent N(0, ``std``**2) draws divided by 2, so
        it is again N(0, ``std``**2). This is the defence Opacus's ``secure_mode`` uses
        (``opacus.optimizers.optimizer._generate_noise``) against the floating-point
        attack on sampled Gaussian noise: a single Box-Muller output leaves gaps in the
        set of representable values that reveal the noiseless value (Mironov 2012, "On
        significance of the least significant bits for differential privacy", CCS;
        Jin et al. 2021, "Are we there yet? Timing and floating-point attacks on
        differential privacy systems", arXiv:2112.05307). Summing 2n draws and dividing
        by sqrt(2n), here n = 2, follows Holohan & Braghin 2021, "Secure random sampling
        in differential privacy", arXiv:2107.10138, section 5.1: the attack's cost grows
        from 2**53 to 2**159. Draws (Box-Muller from :meth:`uniform`) and the sum are in
        float64; only the result is cast to ``dtype``.

        Parameters
        ----------
        shape : tuple of int or torch.Size
            Shape of the noise, e.g. ``param.shape``.
        std : float
            Standard deviation, ``>= 0``; 0 gives zeros (and consumes no keystream).
        dtype : torch.dtype, optional
            Floating-point dtype of the result, float32 by default.

        Returns
        -------
        torch.Tensor
            Noise of ``shape`` and ``dtype``.
        """
        shape = tuple(_count(size) for size in shape)
        std = float(std)
        if not std >= 0.0 or math.isinf(std):
            raise ValueError(f"std must be finite and >= 0, got {std}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        if std == 0.0:
            return torch.zeros(shape, dtype=dtype)
        count = math.prod(shape)
        # Box-Muller: a pair of uniforms (u1, u2) gives two independent standard normals
        # r cos(theta), r sin(theta), r = sqrt(-2 ln u1), theta = 2 pi u2. 4 draws per
        # value need 4 * count uniforms, an even number, so every pair is used whole.
        # Row j of the (4, count) view below holds, for value i, r cos or r sin of pair
        # i or count + i: four independent N(0, std**2) draws (in-place, to save memory).
        u1, u2 = self._uniform_tensor(4 * count).view(2, 2 * count)
        radius = u1.log_().mul_(-2.0).sqrt_()
        theta = u2.mul_(2.0 * math.pi)
        draws = torch.empty((2, 2 * count), dtype=torch.float64)
        torch.cos(theta, out=draws[0])
        torch.sin(theta, out=draws[1])
        draws.mul_(radius).mul_(std)
        noise = draws.view(4, count).sum(dim=0).div_(2.0)
        return noise.view(shape).to(dtype)


def _count(n: int) -> int:
    """``n`` as a non-negative int (a draw count or a dimension), else an error."""
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"counts and sizes must be >= 0, got {n}")
    return n


__all__ = ["SecureRandomness"]
