"""The loss-threshold attack: losses, AUC, TPR at low FPR, the bounds it reports."""

import numpy as np
import pytest
import torch
from torch import nn

from fedmodel.audit.membership_inference import (
    example_losses,
    loss_threshold_attack,
    tpr_at_fpr,
)


def test_example_losses_are_each_examples_cross_entropy():
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 2, 1])
    losses = example_losses(model, x, y, batch_size=2)  # two batches
    logits = x @ model.weight.detach().T
    by_hand = [
        float(torch.logsumexp(logits[i], 0) - logits[i, y[i]]) for i in range(3)
    ]  # -log softmax
    assert losses == pytest.approx(by_hand, rel=1e-6)


def test_auc_is_the_mann_whitney_probability():
    member_losses = np.array([0.1, 0.5, 0.9, 0.2])
    non_member_losses = np.array([0.3, 0.9, 1.5])
    # P(member loss < non-member loss) + P(equal) / 2, counted pair by pair.
    pairs = [(m, n) for m in member_losses for n in non_member_losses]
    by_hand = sum((m < n) + 0.5 * (m == n) for m, n in pairs) / len(pairs)
    result = loss_threshold_attack(member_losses, non_member_losses, delta=1e-5)
    assert result.auc == pytest.approx(by_hand)
    assert by_hand == pytest.approx(9.5 / 12)


def test_tpr_at_fpr_counts_only_thresholds_under_the_fpr():
    members = np.array([5.0, 4.0, 3.0, 1.0])
    non_members = np.array([3.5, 2.0, 0.0, -1.0])
    # FPR 0: thresholds above 3.5 find 2 of 4 members; FPR 1/4 lets 3.0 in (3 of 4).
    assert tpr_at_fpr(members, non_members, fpr=0.0) == 0.5
    assert tpr_at_fpr(members, non_members, fpr=0.25) == 0.75


def test_a_perfectly_separating_attack_gets_auc_1_and_a_positive_bound():
    rng = np.random.default_rng(0)
    member_losses = rng.uniform(0.0, 0.1, 400)
    non_member_losses = rng.uniform(1.0, 2.0, 400)
    result = loss_threshold_attack(member_losses, non_member_losses, delta=1e-5)
    assert result.auc == 1.0 and result.tpr_at_low_fpr == 1.0
    assert result.rates.tpr == 1.0 and result.rates.fpr == 0.0
    assert result.rates.members == 200 and result.chosen_on == 200  # measured on the rest
    assert result.epsilon_lower_bound > 3.0


def test_indistinguishable_losses_prove_nothing():
    rng = np.random.default_rng(1)
    losses = rng.exponential(1.0, 2000)
    result = loss_threshold_attack(losses[:1000], losses[1000:], delta=1e-5, seed=3)
    assert abs(result.auc - 0.5) < 0.05
    assert result.epsilon_lower_bound < 0.3


def test_too_few_records_and_non_finite_losses_are_refused():
    with pytest.raises(ValueError, match="at least 2 members"):
        loss_threshold_attack(np.array([0.1]), np.array([0.2, 0.3]), delta=1e-5)
    with pytest.raises(ValueError, match="finite"):
        loss_threshold_attack(np.array([0.1, np.nan]), np.array([0.2, 0.3]), delta=1e-5)
