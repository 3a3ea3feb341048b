"""ranksim.diagnostics against independent references: plain Python loops over pairs, and
scipy.stats.spearmanr called row by row."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from ranksim import RankSim
from ranksim.diagnostics import (
    COLLAPSED_COSINE,
    DOMINATING_RATIO,
    VANISHING_RATIO,
    gradient_ratio,
    health_report,
    health_warnings,
    mean_cosine,
    rank_agreement,
)


def loop_mean_cosine(features):
    rows = [list(map(float, row)) for row in features]
    total, pairs = 0.0, 0
    for i, a in enumerate(rows):
        for j, b in enumerate(rows):
            if i != j:
                dot = sum(x * y for x, y in zip(a, b))
                total += dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
                pairs += 1
    return total / pairs


def loop_rank_agreement(features, labels, distance):
    """Mean over rows of scipy's Spearman between -dist(y_i, y_j) and cos(f_i, f_j), j != i; rows with
    constant label closeness skipped."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64).reshape(len(features), -1)
    rhos = []
    for i in range(len(features)):
        closeness, cosines = [], []
        for j in range(len(features)):
            if j == i:
                continue
            diff = labels[i] - labels[j]
            closeness.append(-(np.abs(diff).sum() if distance == "l1" else math.sqrt((diff ** 2).sum())))
            cosines.append(features[i] @ features[j] / np.linalg.norm(features[i]) / np.linalg.norm(features[j]))
        if len(set(closeness)) > 1:
            rhos.append(spearmanr(closeness, cosines).statistic)
    return float(np.mean(rhos))


def test_mean_cosine_equals_the_pairwise_loop():
    features = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    assert mean_cosine(features) == pytest.approx(loop_mean_cosine(features.tolist()), abs=1e-12)
    assert mean_cosine(features.numpy()) == pytest.approx(mean_cosine(features), abs=1e-15)
    assert mean_cosine(torch.ones(4, 3) * torch.arange(1.0, 5.0)[:, None]) == pytest.approx(1.0)  # one direction


@pytest.mark.parametrize("distance, label_shape", [("l1", (9,)), ("l1", (9, 1)), ("l2", (9, 2)), ("l1", (9, 3))])
def test_rank_agreement_equals_scipy_spearman_row_by_row(distance, label_shape):
    generator = np.random.default_rng(1)
    features = generator.normal(size=(9, 4))
    labels = generator.integers(0, 4, size=label_shape).astype(float)  # few values: ties in both rankings
    expected = loop_rank_agreement(features, labels, distance)
    assert rank_agreement(torch.as_tensor(features), torch.as_tensor(labels), distance) == pytest.approx(expected,
                                                                                                      abs=1e-12)


def test_rank_agreement_is_one_when_features_rank_like_the_labels():
    ages = torch.tensor([3.0, 10.0, 20.0, 50.0])
    angles = ages / 100  # features on a quarter circle: cosine falls with the age difference
    features = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    assert rank_agreement(features, ages) == pytest.approx(1.0)
    assert rank_agreement(features, -ages) == pytest.approx(1.0)  # only distances count, not the sign


def test_rank_agreement_skips_rows_without_a_label_ranking_and_counts_collapsed_rows_as_zero():
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    # labels 0, 1, 2: the middle row sees two labels at distance 1 (no ranking), left out of the mean
    assert rank_agreement(features, torch.tensor([0.0, 1.0, 2.0])) == pytest.approx(
        loop_rank_agreement(features.numpy(), [0.0, 1.0, 2.0], "l1"))
    assert rank_agreement(torch.ones(5, 3), torch.arange(5.0)) == 0.0  # identical features: no ranking at all


def test_rank_agreement_undefined_batches_say_why():
    with pytest.raises(ValueError, match="single distinct label"):
        rank_agreement(torch.randn(6, 3), torch.full((6,), 40.0))
    with pytest.raises(ValueError, match="batch of 2 sample"):
        rank_agreement(torch.randn(2, 3), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="batch sizes differ"):
        rank_agreement(torch.randn(4, 3), torch.arange(5.0))
    with pytest.raises(ValueError, match="non-finite"):
        rank_agreement(torch.tensor([[1.0, float("nan")], [0.0, 1.0], [1.0, 1.0]]), torch.arange(3.0))
    with pytest.raises(ValueError, match="at least 2 samples"):
        mean_cosine(torch.randn(1, 3))


def test_gradient_ratio_equals_the_hand_computed_norms():
    features = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), requires_grad=True)
    direction = torch.arange(15.0).reshape(5, 3)
    task = (features * direction).sum()  # gradient: direction
    regularizer = 0.5 * 3.0 * features.square().sum()  # gradient: 3 * features
    expected = float(3.0 * features.detach().norm() / direction.norm())
    assert gradient_ratio(features, task, regularizer) == pytest.approx(expected, rel=1e-6)


def test_gradient_ratio_with_ranksim_changes_no_grad_and_keeps_the_graph():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 1)
    features = torch.randn(8, 4, requires_grad=True)
    targets = torch.arange(8.0)
    task = torch.nn.functional.l1_loss(head(features)[:, 0], targets)
    regularizer = RankSim(2.0, 2.0)(features, targets)
    ratio = gradient_ratio(features, task, regularizer)
    manual = [torch.autograd.grad(loss, features, retain_graph=True)[0].norm() for loss in (regularizer, task)]
    assert ratio == pytest.approx(float(manual[0] / manual[1]), rel=1e-6)
    assert head.weight.grad is None and features.grad is None
    (task + regularizer).backward()  # the step can still run backward
    assert head.weight.grad is not None


def test_gradient_ratio_errors_and_edge_values():
    features = torch.randn(4, 2, requires_grad=True)
    with pytest.raises(ValueError, match="must require grad"):
        gradient_ratio(features.detach(), features.sum(), features.sum())
    with pytest.raises(ValueError, match="ranksim_loss: does not depend"):
        gradient_ratio(features, features.sum(), torch.randn(2, requires_grad=True).sum())
    zero_task = (features * 0).sum()
    assert gradient_ratio(features, zero_task, features.sum()) == math.inf
    assert gradient_ratio(features, zero_task, (features * 0).sum()) == 0.0


def test_warnings_fire_exactly_past_their_thresholds():
    assert health_warnings(0.5, 1.0, gamma=1.0) == []
    collapsed = health_warnings(COLLAPSED_COSINE + 1e-4, 1.0, gamma=100.0)
    assert len(collapsed) == 1 and "collapsed" in collapsed[0] and "lower gamma" in collapsed[0]
    assert "learning rate only delays" in collapsed[0]
    assert "gamma is 0 in this run" in health_warnings(0.999, None, gamma=0.0)[0]
    dominating = health_warnings(0.5, DOMINATING_RATIO * 1.01, gamma=100.0)
    assert len(dominating) == 1 and "dominates" in dominating[0] and "now 100" in dominating[0]
    assert health_warnings(0.5, DOMINATING_RATIO, gamma=1.0) == []
    # fp16 with RankSim's term left out of the loss scaling: a healthy ratio of 1 reads 1/65536
    vanishing = health_warnings(0.5, 1.0 / 65536, gamma=1.0)
    assert len(vanishing) == 1 and "no effect" in vanishing[0] and "fp16" in vanishing[0]
    assert health_warnings(0.5, VANISHING_RATIO, gamma=1.0) == []
    assert health_warnings(0.5, 1e-6, gamma=0.0) == []  # no RankSim: no gradient warnings
    assert all("\n" not in line for line in collapsed + dominating + vanishing)


def test_health_report_combines_the_three_numbers():
    features = torch.randn(6, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    targets = torch.tensor([1.0, 5.0, 2.0, 9.0, 4.0, 7.0])
    task = features.sum()
    ranksim = RankSim(1.0, 2.0)(features, targets)
    report = health_report(features, targets, task, ranksim, gamma=1.0)
    assert set(report) == {"mean_cosine", "rank_agreement", "grad_ratio", "warnings"}
    assert report["mean_cosine"] == pytest.approx(loop_mean_cosine(features.tolist()))
    assert report["rank_agreement"] == pytest.approx(loop_rank_agreement(features.detach(), targets, "l1"))
    assert report["grad_ratio"] == pytest.approx(gradient_ratio(features, task, ranksim))
    assert health_report(features.detach(), targets)["grad_ratio"] is None
    with pytest.raises(ValueError, match="pass both"):
        health_report(features, targets, task_loss=task)
