"""Statistical and stream tests of fedmodel.privacy.secure_randomness.

Fixed keys make the statistical tests deterministic (a given key is for tests only);
the default ``os.urandom`` path is tested too, with bounds loose enough never to flake
(5 standard errors, KS p-values above 1e-6).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from fedmodel.privacy.secure_randomness import SecureRandomness

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
N = 200_000


def test_uniform_is_strictly_inside_the_unit_interval_and_uniform():
    u = SecureRandomness(key=KEY).uniform(N)
    assert u.dtype == torch.float64 and u.shape == (N,)
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    values = u.numpy()
    assert stats.kstest(values, "uniform").pvalue > 1e-3
    # mean 1/2 (variance 1/12 per value), variance 1/12 (variance 1/180 per value)
    assert abs(values.mean() - 0.5) < 5 * math.sqrt(1 / 12 / N)
    assert abs(values.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / N)
    # 53 bits each: every value is an odd multiple of 2**-54 (a centred 2**-53 cell)
    lower = values[values < 0.5]
    assert np.all(np.mod(lower * 2.0**54, 2.0) == 1.0)


def test_uniform_default_key_passes_ks():
    u = SecureRandomness().uniform(N).numpy()
    assert u.min() > 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-6


def test_uniform_never_reaches_one_for_the_extreme_words():
    # The largest and smallest 64-bit words are the only ones that could round to 1 or
    # give 0; feed them through the conversion by replacing the keystream.
    rng = SecureRandomness(key=KEY)
    extremes = np.array([0, 2**11 - 1, 2**64 - 1, 2**64 - 2**11], dtype="<u8").tobytes()
    rng._keystream = lambda nbytes: extremes[:nbytes]  # type: ignore[method-assign]
    u = rng.uniform(4).numpy()
    assert np.all(u > 0.0) and np.all(u < 1.0)
    assert u[0] == u[1] == 2.0**-54
    assert u[2] == u[3] == 1.0 - 2.0**-53


@pytest.mark.parametrize("key", [KEY, None], ids=["fixed-key", "os-urandom"])
def test_gaussian_matches_normal_with_the_requested_std(key):
    std = 2.5
    noise = SecureRandomness(key=key).gaussian((N,), std=std, dtype=torch.float64).numpy()
    threshold = 1e-3 if key is not None else 1e-6
    assert stats.kstest(noise, "norm", args=(0.0, std)).pvalue > threshold
    assert abs(noise.mean()) < 5 * std / math.sqrt(N)
    # variance of the sample variance of a normal: 2 sigma**4 / N
    assert abs(noise.var() - std**2) < 5 * math.sqrt(2 * std**4 / N)
    # Gaussian tails, not a clipped or lumpy distribution
    assert abs(stats.kurtosis(noise)) < 5 * math.sqrt(24 / N)
    assert abs(stats.skew(noise)) < 5 * math.sqrt(6 / N)


def test_gaussian_is_the_sum_of_four_draws_over_two():
    # Rebuild the construction from the same stream: Box-Muller on 4 * count uniforms,
    # four N(0, std**2) draws per value, summed and halved.
    std, count = 2.5, 50_000
    noise = SecureRandomness(key=KEY).gaussian((count,), std=std, dtype=torch.float64)
    u1, u2 = SecureRandomness(key=KEY).uniform(4 * count).numpy().reshape(2, 2 * count)
    radius = np.sqrt(-2.0 * np.log(u1))
    draws = std * np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
    draws = draws.reshape(4, count)
    np.testing.assert_allclose(noise.numpy(), draws.sum(axis=0) / 2, rtol=1e-12, atol=1e-12)
    # each single draw is N(0, std**2) on its own, and the four are uncorrelated
    for row in draws:
        assert stats.kstest(row, "norm", args=(0.0, std)).pvalue > 1e-3
    correlations = np.corrcoef(draws)[np.triu_indices(4, k=1)]
    assert np.all(np.abs(correlations) < 5 / math.sqrt(count))


def test_gaussian_respects_shape_and_dtype():
    rng = SecureRandomness(key=KEY)
    assert rng.gaussian((3, 4, 5), std=1.0).dtype == torch.float32
    assert rng.gaussian((3, 4, 5), std=1.0).shape == (3, 4, 5)
    half = rng.gaussian(torch.Size([7, 2]), std=1.0, dtype=torch.float16)
    assert half.dtype == torch.float16 and half.shape == (7, 2)
    assert rng.gaussian((), std=1.0).shape == ()
    assert rng.gaussian((0, 3), std=1.0).shape == (0, 3)
    # float32 is the float64 sum cast once
    same = SecureRandomness(key=KEY).gaussian((1000,), std=1.5, dtype=torch.float64)
    cast = SecureRandomness(key=KEY).gaussian((1000,), std=1.5, dtype=torch.float32)
    assert torch.equal(same.to(torch.float32), cast)


def test_gaussian_std_zero_is_zeros_and_negative_std_is_refused():
    rng = SecureRandomness(key=KEY)
    zeros = rng.gaussian((4, 3), std=0.0, dtype=torch.float64)
    assert zeros.dtype == torch.float64 and torch.equal(
        zeros, torch.zeros(4, 3, dtype=torch.float64)
    )
    for bad in (-1.0, -1e-12, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="std"):
            rng.gaussian((3,), std=bad)
    with pytest.raises(ValueError, match="dtype"):
        rng.gaussian((3,), std=1.0, dtype=torch.int64)
    with pytest.raises(ValueError, match=">= 0"):
        rng.gaussian((3, -1), std=1.0)


@pytest.mark.parametrize("p", [0.01, 1 / 3, 0.9])
def test_bernoulli_rate_is_within_five_binomial_standard_errors(p):
    for rng in (SecureRandomness(key=KEY), SecureRandomness()):
        mask = rng.bernoulli(N, p)
        assert mask.dtype == torch.bool and mask.shape == (N,)
        rate = float(mask.double().mean())
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / N)


def test_bernoulli_extremes_are_exact_and_bad_p_is_refused():
    rng = SecureRandomness(key=KEY)
    assert not rng.bernoulli(N, 0.0).any()
    assert rng.bernoulli(N, 1.0).all()
    assert rng.bernoulli(0, 0.5).shape == (0,)
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match="p must be in"):
            rng.bernoulli(10, bad)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        SecureRandomness(key=bytes(16))
    with pytest.raises(ValueError, match="32 bytes"):
        SecureRandomness(key=bytes(33))
    with pytest.raises(TypeError):
        SecureRandomness(key="x" * 32)  # type: ignore[arg-type]
    rng = SecureRandomness(key=KEY)
    with pytest.raises(ValueError, match=">= 0"):
        rng.uniform(-1)
    with pytest.raises(ValueError, match=">= 0"):
        rng.bernoulli(-1, 0.5)
    with pytest.raises(TypeError):
        rng.uniform(2.5)  # type: ignore[arg-type]
    assert rng.uniform(0).shape == (0,)


def test_default_instances_differ_and_only_an_explicit_key_reproduces():
    assert not torch.equal(SecureRandomness().uniform(64), SecureRandomness().uniform(64))
    assert torch.equal(SecureRandomness(key=KEY).uniform(64), SecureRandomness(key=KEY).uniform(64))
    assert not torch.equal(
        SecureRandomness(key=KEY).uniform(64), SecureRandomness(key=OTHER_KEY).uniform(64)
    )
    a = SecureRandomness(key=KEY).gaussian((100,), std=1.0)
    b = SecureRandomness(key=KEY).gaussian((100,), std=1.0)
    assert torch.equal(a, b)
    assert SecureRandomness.name == "secure"
    shown = repr(SecureRandomness(key=KEY))
    assert KEY.hex() not in shown and repr(KEY) not in shown  # the key is never shown


def test_consecutive_calls_continue_the_stream():
    rng = SecureRandomness(key=KEY)
    first, second = rng.uniform(1000), rng.uniform(1000)
    assert not torch.equal(first, second)
    assert len(set(first.tolist()) & set(second.tolist())) == 0
    # one call of 2000 is the two calls of 1000 back to back: one keystream, no restart
    assert torch.equal(SecureRandomness(key=KEY).uniform(2000), torch.cat([first, second]))
    noise = SecureRandomness()
    assert not torch.equal(noise.gaussian((500,), std=1.0), noise.gaussian((500,), std=1.0))


def test_draws_are_unrelated_to_seeded_torch_generators():
    count = 10_000
    secure = SecureRandomness().gaussian((count,), std=1.0, dtype=torch.float64)
    secure_uniform = SecureRandomness().uniform(count)
    for seed in range(21):
        generator = torch.Generator().manual_seed(seed)
        seeded = torch.normal(0.0, 1.0, (count,), generator=generator, dtype=torch.float64)
        seeded_uniform = torch.rand(count, generator=generator, dtype=torch.float64)
        assert abs(float(torch.corrcoef(torch.stack([secure, seeded]))[0, 1])) < 0.05
        assert (
            abs(float(torch.corrcoef(torch.stack([secure_uniform, seeded_uniform]))[0, 1])) < 0.05
        )
        assert not torch.equal(secure_uniform, seeded_uniform)
