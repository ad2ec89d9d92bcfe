"""The cohort trainer against train_locally, client by client (float64, same seeds)."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedmodel.models import build_model
from fedmodel.privacy.ledger import PrivacyLedger
from fedmodel.training import TrainingSettings, train_locally
from fedmodel.training.batched_training import (
    CohortMember,
    cohort_chunk_size,
    train_cohort,
    unbatchable_reason,
)

SIZES = (23, 40, 7)  # unequal: 3, 5 and 1 steps per epoch at B = 8


@pytest.fixture()
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _datasets(shape, sizes=SIZES):
    generator = torch.Generator().manual_seed(7)
    return [
        TensorDataset(
            torch.randn(n, *shape, generator=generator),
            torch.randint(0, 10, (n,), generator=generator),
        )
        for n in sizes
    ]


def _both(model, datasets, settings):
    """(sequential results and ledgers, cohort results and ledgers) from the same seeds."""
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    sequential = []
    for i, dataset in enumerate(datasets):
        ledger = PrivacyLedger(delta=1e-5) if settings.dp else None
        result = train_locally(
            copy.deepcopy(model), dataset, settings=settings, ledger=ledger, seed=100 + i
        )
        sequential.append((result, ledger))
    members = [
        CohortMember(
            dataset=dataset,
            initial_state=initial,
            seed=100 + i,
            noise_multiplier=settings.noise_multiplier,
            ledger=PrivacyLedger(delta=1e-5) if settings.dp else None,
        )
        for i, dataset in enumerate(datasets)
    ]
    results, _ = train_cohort(model, members, settings=settings)
    return sequential, list(zip(results, [m.ledger for m in members], strict=True))


def _settings(*, dp: bool, sigma: float, **extra) -> TrainingSettings:
    """B = 8, lr 0.3, momentum 0.9, clip 0.5: the equality tests' shared settings."""
    return TrainingSettings(
        epochs=1,
        batch_size=8,
        learning_rate=0.3,
        momentum=0.9,
        dp=dp,
        noise_multiplier=sigma,
        max_grad_norm=0.5,
        **extra,
    )


@pytest.mark.parametrize(
    ("model_name", "shape"), [("mlp", (64,)), ("cnn", (1, 8, 8))], ids=["mlp", "cnn"]
)
@pytest.mark.parametrize(
    ("dp", "sigma"), [(True, 0.0), (True, 1.3), (False, 0.0)], ids=["dp-sigma0", "dp", "no-dp"]
)
def test_cohort_equals_train_locally_client_by_client(float64, model_name, shape, dp, sigma):
    torch.manual_seed(0)
    model = build_model(model_name, input_shape=shape, num_classes=10, hidden_sizes=(16,))
    settings = _settings(dp=dp, sigma=sigma, proximal_mu=0.1)
    sequential, cohort = _both(model, _datasets(shape), settings)
    for (expected, expected_ledger), (got, got_ledger) in zip(sequential, cohort, strict=True):
        assert got.steps == expected.steps and got.num_examples == expected.num_examples
        assert list(got.state_dict) == list(expected.state_dict)
        for key, value in expected.state_dict.items():
            assert got.state_dict[key].dtype == torch.float64
            torch.testing.assert_close(got.state_dict[key], value, rtol=0, atol=1e-12)
        assert got.mean_loss == pytest.approx(expected.mean_loss, rel=1e-12)
        if dp:  # the same steps recorded: the same ledger, the same ε
            assert got_ledger.history == expected_ledger.history
            assert got_ledger.epsilon() == expected_ledger.epsilon()
    assert [r.steps for r, _ in cohort] == [3, 5, 1]  # finished clients were masked


def test_chunked_cohort_equals_whole_cohort(float64):
    torch.manual_seed(1)
    model = build_model("mlp", input_shape=(64,), num_classes=10, hidden_sizes=(16,))
    settings = TrainingSettings(epochs=1, batch_size=8, learning_rate=0.5, noise_multiplier=1.0)
    initial = model.state_dict()

    def run(memory_mb):
        members = [
            CohortMember(
                dataset=d,
                initial_state=initial,
                seed=i,
                noise_multiplier=1.0,
                ledger=PrivacyLedger(delta=1e-5),
            )
            for i, d in enumerate(_datasets((64,)))
        ]
        return train_cohort(model, members, settings=settings, memory_mb=memory_mb)[0]

    assert cohort_chunk_size(model, settings=settings, input_numel=64, memory_mb=0.1) == 1
    for whole, chunked in zip(run(0.0), run(0.1), strict=True):
        for key, value in whole.state_dict.items():
            torch.testing.assert_close(chunked.state_dict[key], value, rtol=0, atol=1e-12)


class _ZeroGradient(nn.Module):
    """Logits that do not depend on ``w``: its gradient is exactly zero, only noise moves it."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(size))

    def forward(self, x):
        return 0.0 * self.w.sum() + torch.zeros(x.shape[0], 10)


def test_noise_has_the_clients_own_scale_and_is_independent_across_clients(float64):
    size, batch_size, max_grad_norm = 20_000, 10, 2.0
    sigmas = (0.5, 2.0)
    datasets = _datasets((3,), sizes=(100, 100))  # sampling rate 1/10, B_e = 10
    settings = TrainingSettings(
        epochs=1, batch_size=batch_size, learning_rate=1.0, max_grad_norm=max_grad_norm
    )
    members = [
        CohortMember(
            dataset=d,
            initial_state={"w": torch.zeros(size)},
            seed=i,
            noise_multiplier=s,
            ledger=PrivacyLedger(delta=1e-5),
        )
        for i, (d, s) in enumerate(zip(datasets, sigmas, strict=True))
    ]
    results, _ = train_cohort(_ZeroGradient(size), members, settings=settings)
    updates = [-r.state_dict["w"] for r in results]  # the sum of 10 steps' noise, lr 1
    for update, sigma, result in zip(updates, sigmas, results, strict=True):
        assert result.steps == 10
        expected_std = sigma * max_grad_norm / batch_size * result.steps**0.5
        # std of a sample std of 20k normals: 0.5 %; 3 % is > 5 standard errors.
        assert float(update.std()) == pytest.approx(expected_std, rel=0.03)
        assert abs(float(update.mean())) < 5 * expected_std / size**0.5
    correlation = torch.corrcoef(torch.stack(updates))[0, 1]
    assert abs(float(correlation)) < 5 / size**0.5


def test_models_that_cannot_be_batched_are_named():
    assert unbatchable_reason(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))) is not None
    assert "BatchNorm1d" in unbatchable_reason(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert unbatchable_reason(build_model("cnn", input_shape=(1, 8, 8), num_classes=10)) is None
    with pytest.raises(ValueError, match="Dropout"):
        train_cohort(
            nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(3, 10)),
            [CohortMember(dataset=_datasets((3,), sizes=(5,))[0], initial_state={}, seed=0)],
            settings=TrainingSettings(epochs=1, batch_size=2, learning_rate=0.1, dp=False),
        )


CNN_VARIANTS = {
    "default": ((1, 8, 8), {}),
    "hw-input-tanh-avg-k5-no-norm": (
        (8, 8),
        {"activation": "tanh", "pooling": "avg", "kernel_size": 5, "normalization": "none"},
    ),
    "rgb-three-blocks": ((3, 8, 8), {"conv_channels": (4, 8, 8)}),
}


def _check_layer_path_equals_train_locally(model, shape):
    """DP with most examples clipped, 2 epochs, momentum: the layer path equals train_locally."""
    from fedmodel.training.batched_training import _CohortStep

    settings = TrainingSettings(
        epochs=2,
        batch_size=8,
        learning_rate=0.3,
        momentum=0.9,
        dp=True,
        noise_multiplier=0.7,
        max_grad_norm=0.05,  # most examples clipped
    )
    assert _CohortStep(model, settings=settings, device=torch.device("cpu"), compiled=False).chain
    sequential, cohort = _both(model, _datasets(shape), settings)
    for (expected, expected_ledger), (got, got_ledger) in zip(sequential, cohort, strict=True):
        assert got.steps == expected.steps
        for key, value in expected.state_dict.items():
            torch.testing.assert_close(got.state_dict[key], value, rtol=0, atol=1e-12)
        assert got.mean_loss == pytest.approx(expected.mean_loss, rel=1e-12)
        assert got_ledger.history == expected_ledger.history


@pytest.mark.parametrize("variant", list(CNN_VARIANTS))
def test_cnn_layer_by_layer_gradients_equal_train_locally(float64, variant):
    """Under DP a CNN's per-example gradients come layer by layer (_LayerChain), not vmap."""
    from fedmodel.models.settings import ModelSettings

    shape, options = CNN_VARIANTS[variant]
    torch.manual_seed(2)
    model = build_model(
        "cnn",
        input_shape=shape,
        num_classes=10,
        settings=ModelSettings(hidden_sizes=(16,), **options),
    )
    _check_layer_path_equals_train_locally(model, shape)


MLP_VARIANTS = {
    "two-hidden-tanh": ((8, 8), {"hidden_sizes": (16, 12), "activation": "tanh"}),
    "linear": ((3, 4, 4), {"hidden_sizes": ()}),
}


@pytest.mark.parametrize("variant", list(MLP_VARIANTS))
def test_mlp_layer_by_layer_gradients_equal_train_locally(float64, variant):
    """The MLP's per-example gradients are never materialised (ghost norms), yet exact."""
    from fedmodel.models.mlp import MLP

    shape, options = MLP_VARIANTS[variant]
    torch.manual_seed(3)
    model = MLP(input_shape=shape, num_classes=10, **options)
    _check_layer_path_equals_train_locally(model, shape)


class _OwnForward(nn.Module):
    """A user's model: its forward is its own, so the layer path cannot assume it."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        return self.layers(x) * 2


def test_only_known_chains_take_the_layer_path():
    from fedmodel.training.batched_training import _LayerChain

    def names(model):
        return [n for n, _ in model.named_parameters()]

    cnn = build_model("cnn", input_shape=(1, 8, 8), num_classes=10)
    assert _LayerChain.of(cnn, names(cnn)) is not None
    mlp = build_model("mlp", input_shape=(64,), num_classes=10)
    assert _LayerChain.of(mlp, names(mlp)) is not None
    assert _LayerChain.of(_OwnForward(), names(_OwnForward())) is None  # vmap
    cnn.features[0] = nn.Conv2d(1, 16, 3, padding=1, dilation=1, groups=1, padding_mode="reflect")
    assert _LayerChain.of(cnn, names(cnn)) is None  # a conv it would compute differently


@pytest.mark.parametrize(
    ("dp", "sigma"), [(True, 0.0), (True, 1.3), (False, 0.0)], ids=["dp-sigma0", "dp", "no-dp"]
)
def test_a_model_with_its_own_forward_takes_vmap_and_equals_train_locally(float64, dp, sigma):
    torch.manual_seed(4)
    model = _OwnForward()
    settings = _settings(dp=dp, sigma=sigma)
    sequential, cohort = _both(model, _datasets((64,)), settings)
    for (expected, expected_ledger), (got, got_ledger) in zip(sequential, cohort, strict=True):
        for key, value in expected.state_dict.items():
            torch.testing.assert_close(got.state_dict[key], value, rtol=0, atol=1e-12)
        if dp:
            assert got_ledger.history == expected_ledger.history


def test_a_group_norm_over_single_values_is_refused_as_by_vmap(float64):
    """The vmap path raises on it (a batch of one); so does the layer path (the Grid falls back)."""
    from fedmodel.models.settings import ModelSettings

    model = build_model(
        "cnn",
        input_shape=(3, 6, 6),
        num_classes=10,
        settings=ModelSettings(hidden_sizes=(16,), conv_channels=(4, 8, 8)),
    )
    settings = TrainingSettings(
        epochs=1, batch_size=8, learning_rate=0.1, dp=True, noise_multiplier=0.0
    )
    members = [
        CohortMember(
            dataset=d, initial_state=model.state_dict(), seed=1, ledger=PrivacyLedger(delta=1e-5)
        )
        for d in _datasets((3, 6, 6))
    ]
    with pytest.raises(ValueError, match="one value per"):
        train_cohort(model, members, settings=settings)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("model_name", "shape"), [("mlp", (64,)), ("cnn", (1, 28, 28)), ("linear", (5,))]
)
def test_noise_runs_draw_what_one_draw_per_parameter_draws(dtype, model_name, shape):
    from fedmodel.training.batched_training import _noise_runs

    hidden = None if model_name == "linear" else (64, 64)
    model = build_model(model_name, input_shape=shape, num_classes=10, hidden_sizes=hidden)
    model = model.to(dtype)
    runs = _noise_runs(model, torch.device("cpu"))
    assert [n for run in runs for n in run] == [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    opacus_way = torch.Generator().manual_seed(11)
    expected = {
        n: torch.normal(0, 0.7, size=p.shape, generator=opacus_way) for n, p in params.items()
    }
    merged = torch.Generator().manual_seed(11)
    for run in runs:
        sizes = [params[n].numel() for n in run]
        draw = torch.normal(0, 0.7, size=(sum(sizes),), generator=merged)
        for n, part in zip(run, draw.split(sizes), strict=True):
            assert torch.equal(part.reshape(params[n].shape), expected[n]), n
    assert torch.equal(torch.rand(4, generator=merged), torch.rand(4, generator=opacus_way))
    if model_name == "mlp":  # 64x64, 64, 64x64, 64, 10x64 in one draw; the 10 biases alone
        assert [len(run) for run in runs] == [5, 1]
