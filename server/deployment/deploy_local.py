"""``fedmodel deploy-local``: one federated job on a local federation, start to stop."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.deployment.local_federation import LocalFederation

if TYPE_CHECKING:
    from fedmodel.results import RoundMetrics


@dataclass(frozen=True)
class DeploymentResult:
    """Where a deployed run wrote its folder, what each round measured, how it ended."""

    run_dir: Path
    rounds: list[RoundMetrics]
    run_id: int
    status: str
    work_dir: Path

    @property
    def final(self) -> RoundMetrics:
        return self.rounds[-1]


def deploy_local(
    run_config: Mapping[str, Any],
    *,
    num_clients: int,
    work_dir: str | os.PathLike[str],
    tls: bool = False,
    auth: bool = False,
    warm: bool = True,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> DeploymentResult:
    """Run one federated job on a local federation of ``num_clients`` SuperNodes.

    Starts the federation in ``work_dir``, submits the run with ``run_config`` (a
    ``run-dir`` is chosen under ``work_dir/runs`` unless given), streams its log to
    ``on_line`` and stops every process before returning, also on failure or Ctrl-C.
    With ``resume = true`` the nodes' state-dirs in ``work_dir`` must be there (their
    ledgers are the record of what each node spent).
    """
    from fedmodel.config import ConfigError, RunConfig
    from fedmodel.results import default_run_dir, load_metrics

    config = RunConfig.from_mapping(run_config)  # fail before starting anything
    work = Path(work_dir).resolve()
    run_dir = Path(config.run_dir or default_run_dir(config, root=work / "runs")).resolve()
    overrides = {**run_config, "run-dir": str(run_dir)}
    # A deployed node reads data locations from its own node config only (the server's
    # run config cannot point it at files); here the user runs every node, so each gets
    # the run's data-dir as its own.
    node_data = {"data-dir": os.path.abspath(config.data_dir)} if config.data_dir else {}
    federation = LocalFederation(
        work,
        num_nodes=num_clients,
        tls=tls,
        auth=auth,
        warm=warm,
        # This machine's nodes run this project as installed, and nothing else.
        require_installed_app=warm,
        node_configs=[dict(node_data) for _ in range(num_clients)],
    )
    if config.resume and config.dp:
        # A resumed run is a new Flower run: what each node spent is only in its state-dir.
        missing = [i for i in range(num_clients) if not federation.node_state_dir(i).is_dir()]
        if missing:
            raise ConfigError(
                f"resume: {work} holds no state-dir of node {missing[0]} "
                f"({federation.node_state_dir(missing[0])}); resume in the work folder the run "
                "used, or every node's ε would start again at 0"
            )
    with federation:
        outcome = federation.submit(overrides, timeout=timeout, on_line=on_line)
    rounds = load_metrics(run_dir) if (run_dir / "metrics.json").exists() else []
    return DeploymentResult(
        run_dir=run_dir, rounds=rounds, run_id=outcome.run_id, status=outcome.status, work_dir=work
    )
