"""Privacy accounting: per-client ledgers and noise calibration."""

from fedmodel.privacy.calibration import noise_for_target_epsilon
from fedmodel.privacy.ledger import ACCOUNTANT_NAMES, PrivacyLedger

__all__ = ["ACCOUNTANT_NAMES", "PrivacyLedger", "noise_for_target_epsilon"]
