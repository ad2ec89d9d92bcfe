"""Is a model trainable with DP-SGD? Opacus's ``ModuleValidator``, with its fixes on request."""

from __future__ import annotations

import logging

from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import nn

from fedmodel.config import ConfigError

logger = logging.getLogger(__name__)
# Said once per process and model: an in-process simulation builds it on every client.
_reported: set[tuple[str, str]] = set()


def prepare_for_dp(model: nn.Module, *, name: str, dp: bool, fix: bool) -> nn.Module:
    """``model``, fixed by ``ModuleValidator.fix`` if ``fix``, checked if ``dp``.

    Opacus refuses layers whose per-example gradients it cannot compute or that mix
    examples (BatchNorm's batch statistics break the per-example sensitivity bound of
    DP-SGD). ``fix`` replaces them as Opacus does (BatchNorm -> GroupNorm, ...), logged
    as a warning naming what changed, the same on every node (deterministic).

    Raises
    ------
    ConfigError
        Under ``dp``, one line naming the model and each incompatible layer, and that
        ``fix-model = true`` may repair it.
    """
    if fix:
        before = _layer_kinds(model)
        model = ModuleValidator.fix(model)
        after = _layer_kinds(model)
        changed = [
            f"{path}: {kind} -> {after.get(path, 'removed')}"
            for path, kind in before.items()
            if after.get(path) != kind
        ]
        report = "; ".join(changed) or "nothing (already compatible)"
        if (name, report) not in _reported:
            _reported.add((name, report))
            logger.warning(
                "fix-model: Opacus ModuleValidator.fix changed model %r: %s", name, report
            )
    if dp:
        layers = "; ".join(incompatible_layers(model))
        if layers:
            raise ConfigError(
                f"run-config key 'model' = {name!r} cannot be trained with DP-SGD (Opacus "
                f"ModuleValidator): {layers}. Set fix-model = true to let Opacus replace "
                "these layers (e.g. BatchNorm -> GroupNorm), or change the model"
            )
    return model


def incompatible_layers(model: nn.Module) -> list[str]:
    """One line per layer Opacus's ``ModuleValidator`` refuses: its path, type and why.

    ``ModuleValidator.validate`` says why but not where (its source has a TODO for the
    module name), so this runs the same per-type validators module by module.
    """
    found = []
    for path, module in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        for error in validator(module) if validator else ():
            why = str(error).split(". ")[0]  # Opacus's first sentence is the reason
            found.append(f"layer '{path or '(root)'}' ({type(module).__name__}): {why}")
    # Whole-model checks (e.g. training mode) that no layer's validator covers.
    if not found:
        found = [str(error) for error in ModuleValidator.validate(model, strict=False)]
    return found


def _layer_kinds(model: nn.Module) -> dict[str, str]:
    return {path or "(root)": type(module).__name__ for path, module in model.named_modules()}
