"""Aggregation strategies by name: which run-config keys each reads, and where it comes from.

The strategies themselves are Flower's (``flwr.serverapp.strategy``); ``server/`` builds
them from these names. This registry is the domain's part: the names the run config
accepts, the parameters each strategy reads (a parameter set for a strategy that does
not read it is a config error), and the paper each comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmodel.registry import Registry


@dataclass(frozen=True)
class StrategySpec:
    """One strategy run-config ``strategy`` can name.

    Parameters
    ----------
    reads : tuple of str
        Run-config keys (kebab-case) the strategy takes.
    paper : str
        Where the algorithm comes from.
    needs_train_loss : bool
        It weights clients by their training loss, a noise-free statistic of their
        records: not available under DP.
    robust : bool
        Designed to tolerate a fraction of Byzantine clients.
    """

    reads: tuple[str, ...] = ()
    paper: str = ""
    needs_train_loss: bool = False
    robust: bool = False


STRATEGIES: Registry[StrategySpec] = Registry("strategy")
_ADAPTIVE = ("server-learning-rate", "tau", "beta-1", "beta-2")
_BYZANTINE = "Blanchard et al. 2017, Machine Learning with Adversaries (NeurIPS)"
for _name, _spec in {
    "fedavg": StrategySpec(paper="McMahan et al. 2017, Communication-Efficient Learning of "
                           "Deep Networks from Decentralized Data (AISTATS)"),
    "fedavgm": StrategySpec(("server-learning-rate", "server-momentum"),
                            "Hsu et al. 2019, Measuring the Effects of Non-Identical Data "
                            "Distribution for Federated Visual Classification"),
    "fedprox": StrategySpec(("proximal-mu",), "Li et al. 2020, Federated Optimization in "
                            "Heterogeneous Networks (MLSys)"),
    "fedadam": StrategySpec(_ADAPTIVE, "Reddi et al. 2021, Adaptive Federated Optimization "
                            "(ICLR)"),
    "fedyogi": StrategySpec(_ADAPTIVE, "Reddi et al. 2021, Adaptive Federated Optimization "
                            "(ICLR)"),
    "fedadagrad": StrategySpec(("server-learning-rate", "tau"), "Reddi et al. 2021, Adaptive "
                               "Federated Optimization (ICLR)"),
    "fedmedian": StrategySpec(paper="Yin et al. 2018, Byzantine-Robust Distributed Learning: "
                              "Towards Optimal Statistical Rates (ICML)", robust=True),
    "fedtrimmedavg": StrategySpec(("trim-beta",), "Yin et al. 2018, Byzantine-Robust "
                                  "Distributed Learning (ICML)", robust=True),
    "krum": StrategySpec(("num-malicious-nodes",), _BYZANTINE, robust=True),
    "multikrum": StrategySpec(("num-malicious-nodes", "num-nodes-to-select"), _BYZANTINE,
                              robust=True),
    "bulyan": StrategySpec(("num-malicious-nodes",), "El Mhamdi et al. 2018, The Hidden "
                           "Vulnerability of Distributed Learning in Byzantium (ICML)",
                           robust=True),
    "qfedavg": StrategySpec(("q-fair",), "Li et al. 2020, Fair Resource Allocation in "
                            "Federated Learning (ICLR)", needs_train_loss=True),
}.items():
    STRATEGIES.register(_name, _spec)

# Every key any strategy reads; a key set away from its default for a strategy that
# does not read it is refused (fedmodel/config.py).
STRATEGY_KEYS = tuple(sorted({key for name in STRATEGIES for key in STRATEGIES.get(name).reads}))
