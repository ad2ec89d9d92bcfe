"""What the run config says about the model: one validated value every builder receives."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedmodel.config import ACTIVATIONS, NORMALIZATIONS, POOLINGS, ConfigError


@dataclass(frozen=True)
class ModelSettings:
    """The architecture knobs of the built-in models and how a model is prepared for DP.

    The defaults build today's ``mlp`` and ``cnn`` bit for bit. Each builder says which
    fields it reads (see :data:`fedmodel.models.MODELS`); the run-config key of field
    ``foo_bar`` is ``foo-bar``.

    Parameters
    ----------
    hidden_sizes : tuple[int, ...]
        ``hidden-sizes``: the MLP's hidden widths; the CNN's dense width is the last entry.
    conv_channels : tuple[int, ...]
        ``conv-channels``: output channels of each CNN conv block.
    kernel_size : int
        ``kernel-size``: the CNN's square conv kernel, odd so that 'same' padding
        (``kernel_size // 2``) keeps the feature map's size.
    pooling : str
        ``pooling``: ``"max"`` or ``"avg"``, the CNN's 2x2 pooling after each block.
    activation : str
        ``activation``: ``"relu"`` or ``"tanh"``. Tempered (bounded) activations such as
        tanh help DP-SGD (Papernot et al. 2021, https://arxiv.org/abs/2007.14191).
    normalization : str
        ``normalization``: ``"group"`` (GroupNorm after each conv) or ``"none"``.
        BatchNorm is not offered: it mixes examples and breaks DP-SGD's per-example bound.
    dp : bool
        The model will be trained with DP-SGD: it must pass Opacus's ``ModuleValidator``.
    fix_model : bool
        ``fix-model``: apply ``ModuleValidator.fix`` (e.g. BatchNorm -> GroupNorm) first.
    """

    hidden_sizes: tuple[int, ...] = (64,)
    conv_channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 3
    pooling: str = "max"
    activation: str = "relu"
    normalization: str = "group"
    dp: bool = False
    fix_model: bool = False

    def __post_init__(self) -> None:
        for name in ("hidden_sizes", "conv_channels"):
            sizes = tuple(getattr(self, name))
            if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
                raise ValueError(f"{name} must be positive integers, got {sizes!r}")
            object.__setattr__(self, name, sizes)
        if not (self.kernel_size >= 1 and self.kernel_size % 2 == 1):
            raise ValueError(f"kernel_size must be an odd integer >= 1, got {self.kernel_size}")
        for name, allowed in (
            ("pooling", POOLINGS),
            ("activation", ACTIVATIONS),
            ("normalization", NORMALIZATIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )


def activation_layer(name: str) -> nn.Module:
    """The activation module called ``name`` (one of :data:`ACTIVATIONS`)."""
    return {"relu": nn.ReLU, "tanh": nn.Tanh}[name]()


def refuse_set(
    settings: ModelSettings, names: tuple[str, ...], *, model: str, instead: str
) -> None:
    """A preset fixes the architecture fields ``names``: setting any of them is a ConfigError."""
    defaults = ModelSettings()
    for name in names:
        if getattr(settings, name) != getattr(defaults, name):
            key = name.replace("_", "-")
            raise ConfigError(
                f"run-config key '{key}' = {getattr(settings, name)!r} cannot be set with "
                f"model = {model!r} (it fixes it); {instead}"
            )
