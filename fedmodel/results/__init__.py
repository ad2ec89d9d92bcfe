"""Run results: per-round metrics, the run folder."""

from fedmodel.results.run_folder import (
    RoundMetrics,
    RunFolder,
    default_run_dir,
    load_metrics,
    privacy_header,
)

__all__ = ["RoundMetrics", "RunFolder", "default_run_dir", "load_metrics", "privacy_header"]
