"""Balanced MSE losses (ranksim.balanced_mse) against per-sample loops of the paper's formulas."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ranksim import BalancedMSELoss, bmc_loss, bni_loss, gai_loss
from ranksim.balanced_mse import GaussianMixture1D, balanced_mae, fit_gaussian_mixture, label_histogram

RTOL = 1e-5


def loop_logsumexp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def loop_bmc(pred, target, var):
    """mean_i -log softmax_j(-||p_i - y_j||^2 / 2var)[i] * 2var, one row at a time."""
    rows = []
    for i in range(len(pred)):
        logits = [-sum((pi - yj) ** 2 for pi, yj in zip(pred[i], target[j])) / (2 * var) for j in range(len(pred))]
        rows.append(loop_logsumexp(logits) - logits[i])
    return sum(rows) / len(rows) * 2 * var


def loop_bni(pred, target, var, centres, masses):
    total = sum(masses)
    out = []
    for p, y in zip(pred, target):
        terms = [-(p - c) ** 2 / (2 * var) + math.log(m / total) for c, m in zip(centres, masses)]
        out.append((p - y) ** 2 / (2 * var) + loop_logsumexp(terms))
    return sum(out) / len(out) * 2 * var


def loop_gai(pred, target, var, pis, mus, vs):
    out = []
    for p, y in zip(pred, target):
        terms = [-0.5 * math.log(v + var) - (p - mu) ** 2 / (2 * (v + var)) + math.log(pi)
                 for pi, mu, v in zip(pis, mus, vs)]
        out.append((p - y) ** 2 / (2 * var) + 0.5 * math.log(var) + loop_logsumexp(terms))
    return sum(out) / len(out) * 2 * var


def numeric_grad(fn, x, eps=1e-6):
    """Central differences of the float64 loop ``fn(list) -> float``."""
    grad = np.zeros(len(x))
    for i in range(len(x)):
        up, down = list(x), list(x)
        up[i] += eps
        down[i] -= eps
        grad[i] = (fn(up) - fn(down)) / (2 * eps)
    return grad


def batch(b=7, d=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.randn(b, d, generator=g, dtype=torch.float64) * 3 + 30).requires_grad_()
    target = torch.randn(b, d, generator=g, dtype=torch.float64) * 3 + 30
    return pred, target


@pytest.mark.parametrize("d", [1, 2])
def test_bmc_matches_loop_value_and_gradient(d):
    pred, target = batch(d=d)
    var = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    loss = bmc_loss(pred, target, var)
    loss.backward()
    p, y = pred.detach().tolist(), target.tolist()
    assert loss.item() == pytest.approx(loop_bmc(p, y, 4.0), rel=RTOL)
    flat = pred.detach().reshape(-1).tolist()
    expected = numeric_grad(lambda f: loop_bmc(np.reshape(f, (-1, d)).tolist(), y, 4.0), flat)
    np.testing.assert_allclose(pred.grad.reshape(-1).numpy(), expected, rtol=RTOL, atol=1e-8)
    # sigma^2 is detached in the 2 sigma^2 factor: its gradient is 2var * d(CE)/d(var) only
    ce = lambda v: loop_bmc(p, y, v) / (2 * v)  # noqa: E731
    assert var.grad.item() == pytest.approx(2 * 4.0 * (ce(4.0 + 1e-6) - ce(4.0 - 1e-6)) / 2e-6, rel=1e-4)


def test_bmc_refuses_a_single_sample():
    with pytest.raises(ValueError, match="at least 2"):
        bmc_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor(1.0))


def test_bmc_one_distinct_label_is_log_b_at_the_label():
    # every target equal and every prediction on it: all logits equal, CE = log B
    b = 5
    loss = bmc_loss(torch.full((b, 1), 3.0), torch.full((b, 1), 3.0), torch.tensor(2.0))
    assert loss.item() == pytest.approx(math.log(b) * 2 * 2.0, rel=RTOL)


def test_bni_matches_loop_value_and_gradient():
    pred, target = batch()
    centres, masses = [25.0, 28.0, 30.0, 31.0, 36.0], [3.0, 10.0, 40.0, 7.0, 1.0]
    var = torch.tensor(9.0, dtype=torch.float64)
    loss = bni_loss(pred, target, var, torch.tensor(centres, dtype=torch.float64),
                    torch.tensor(masses, dtype=torch.float64))
    loss.backward()
    p, y = pred.detach()[:, 0].tolist(), target[:, 0].tolist()
    assert loss.item() == pytest.approx(loop_bni(p, y, 9.0, centres, masses), rel=RTOL)
    expected = numeric_grad(lambda f: loop_bni(f, y, 9.0, centres, masses), p)
    np.testing.assert_allclose(pred.grad[:, 0].numpy(), expected, rtol=RTOL, atol=1e-8)


def test_gai_matches_loop_value_and_gradient():
    pred, target = batch()
    pis, mus, vs = [0.2, 0.5, 0.3], [25.0, 30.0, 34.0], [4.0, 1.0, 9.0]
    var = torch.tensor(2.5, dtype=torch.float64)
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    loss = gai_loss(pred, target, var, f64(pis), f64(mus), f64(vs))
    loss.backward()
    p, y = pred.detach()[:, 0].tolist(), target[:, 0].tolist()
    assert loss.item() == pytest.approx(loop_gai(p, y, 2.5, pis, mus, vs), rel=RTOL)
    expected = numeric_grad(lambda f: loop_gai(f, y, 2.5, pis, mus, vs), p)
    np.testing.assert_allclose(pred.grad[:, 0].numpy(), expected, rtol=RTOL, atol=1e-8)


def test_bni_and_gai_with_one_sample_and_one_bin():
    pred, target = torch.tensor([[2.0]]), torch.tensor([[3.0]])
    var = torch.tensor(1.0)
    # one bin at 3 with mass 1: (2-3)^2/2 + (-(2-3)^2/2) = 0
    assert bni_loss(pred, target, var, torch.tensor([3.0]), torch.tensor([5.0])).item() == pytest.approx(0.0, abs=1e-7)
    got = gai_loss(pred, target, var, torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([1.0]))
    assert got.item() == pytest.approx(loop_gai([2.0], [3.0], 1.0, [1.0], [3.0], [1.0]), rel=RTOL)


def test_label_histogram_counts_integer_bins_and_drops_empty_ones():
    centres, masses = label_histogram([20, 20, 21, 25, 25, 25])
    np.testing.assert_array_equal(centres, [20, 21, 25])
    np.testing.assert_allclose(masses, [2 / 6, 1 / 6, 3 / 6])
    # LDS: a triangular window of size 3 is [0.5, 1, 0.5] (max 1) -> 20: 2 + 0.5, 21: 1 + 1, 25: 3
    centres, masses = label_histogram([20, 20, 21, 25, 25, 25], lds=True, lds_kernel="triang", lds_ks=3)
    np.testing.assert_allclose(masses, np.array([2.5, 2.0, 3.0]) / 7.5)


def test_gmm_recovers_a_well_separated_mixture_and_beats_its_initialisation():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(20, 2, 3000), rng.normal(50, 5, 1000)])
    gmm = fit_gaussian_mixture(x, n_components=2)
    order = np.argsort(gmm.means)
    np.testing.assert_allclose(gmm.means[order], [20, 50], atol=0.5)
    np.testing.assert_allclose(np.sqrt(gmm.variances[order]), [2, 5], atol=0.3)
    np.testing.assert_allclose(gmm.weights[order], [0.75, 0.25], atol=0.02)
    # the fitted mean log-likelihood is scipy's log density of the mixture, and at least the truth's
    truth = np.log(0.75 * norm.pdf(x, 20, 2) + 0.25 * norm.pdf(x, 50, 5)).mean()
    mine = np.log(sum(w * norm.pdf(x, m, math.sqrt(v)) for w, m, v in zip(gmm.weights, gmm.means, gmm.variances)))
    assert gmm.log_likelihood(x) == pytest.approx(mine.mean(), rel=1e-9)
    assert gmm.log_likelihood(x) >= truth - 1e-9


def test_gmm_of_one_distinct_label_and_round_trip():
    gmm = fit_gaussian_mixture([7.0] * 10, n_components=8)
    assert gmm.means.tolist() == pytest.approx([7.0]) and gmm.weights.tolist() == pytest.approx([1.0])
    assert gmm.variances[0] > 0
    again = GaussianMixture1D.from_dict(gmm.to_dict())
    np.testing.assert_array_equal(again.variances, gmm.variances)


def test_module_learns_sigma_keeps_prior_in_state_dict_and_can_freeze():
    gmm = fit_gaussian_mixture(np.arange(10.0), n_components=3)
    module = BalancedMSELoss("gai", init_sigma=2.0, gmm=gmm)
    assert set(module.state_dict()) == {"noise_sigma", "gmm_weights", "gmm_means", "gmm_vars"}
    pred, target = torch.randn(6, 1, requires_grad=True), torch.randn(6, 1)
    loss = module(pred, target, torch.ones(6, 1))
    expected = gai_loss(pred, target, torch.tensor(4.0), *(torch.tensor(v, dtype=torch.float32)
                                                           for v in (gmm.weights, gmm.means, gmm.variances)))
    assert loss.item() == pytest.approx(expected.item(), rel=RTOL)
    loss.backward()
    assert module.noise_sigma.grad is not None and module.noise_sigma.grad.item() != 0
    frozen = BalancedMSELoss("bmc", init_sigma=3.0, freeze_sigma=True)
    assert not frozen.noise_sigma.requires_grad
    with pytest.raises(ValueError, match="bin_centers"):
        BalancedMSELoss("bni")
    # a batch of one: BMC's value 0, with a gradient graph (no error mid-run)
    one = torch.ones(1, 1, requires_grad=True)
    loss = BalancedMSELoss("bmc")(one, torch.zeros(1, 1))
    loss.backward()
    assert loss.item() == 0 and one.grad.item() == 0


def test_balanced_mae_averages_per_label_maes_not_samples():
    labels = np.array([20.0, 20.0, 20.0, 30.5, 40.0])
    preds = np.array([21.0, 21.0, 21.0, 33.5, 40.0])  # label 20: MAE 1 (3 samples), 30: 3, 40: 0
    groups = {"many": labels < 25, "few": labels >= 25, "medium": np.zeros(5, dtype=bool)}
    got = balanced_mae(preds, labels, groups)
    assert got == {"all": pytest.approx(4 / 3), "many": pytest.approx(1.0), "few": pytest.approx(1.5), "medium": None}
    assert np.abs(preds - labels).mean() == pytest.approx(1.2)  # the plain MAE differs
