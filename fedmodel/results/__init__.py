"""Run results: per-round metrics, the run folder."""

from fedmodel.results.run_folder import (
    RoundMetrics,
    RunFolder,
    check_new_run_dir,
    default_run_dir,
    load_metrics,
    privacy_header,
)

__all__ = [
    "RoundMetrics",
    "RunFolder",
    "check_new_run_dir",
    "default_run_dir",
    "load_metrics",
    "privacy_header",
]
