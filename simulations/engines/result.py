"""What every engine returns: the run folder and the metrics of each round."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedmodel.results import RoundMetrics


@dataclass(frozen=True)
class SimulationResult:
    """Where a run's folder is and what each round measured."""

    run_dir: Path
    rounds: list[RoundMetrics]

    @property
    def final(self) -> RoundMetrics:
        return self.rounds[-1]
