"""fedmodel: the domain of private federated training (models, data, DP-SGD, accounting).

This package does not import Flower; ``client/`` and ``server/`` adapt it to Flower's
Message API and ``simulations/`` drives those apps.

Python runs this file before any ``fedmodel`` module, so it is where the run config gets
the registries its keys choose from: their packages import the run config, which
therefore cannot import them (see :class:`fedmodel.config.Choices`).
"""

from fedmodel import config

__version__ = "0.1.0"


def _hand_the_registries_to_the_run_config() -> None:
    from fedmodel.data.datasets import DATASETS
    from fedmodel.data.partitioning import PARTITIONERS
    from fedmodel.models import MODELS
    from fedmodel.privacy.ledger import ACCOUNTANT_NAMES
    from fedmodel.strategies import STRATEGIES
    from fedmodel.training.local_training import GRAD_SAMPLE_MODES

    config.use_choices(
        config.Choices(
            model=MODELS,
            dataset=DATASETS,
            partitioner=PARTITIONERS,
            accountant=ACCOUNTANT_NAMES,
            grad_sample_mode=GRAD_SAMPLE_MODES,
            strategy=STRATEGIES,
        )
    )


_hand_the_registries_to_the_run_config()
