"""Weighted losses against plain per-element formulas and torch.nn.functional."""
import math

import pytest
import torch
import torch.nn.functional as F

from ranksim.losses import (
    LOSSES,
    get_loss,
    weighted_focal_l1_loss,
    weighted_focal_mse_loss,
    weighted_huber_loss,
    weighted_l1_loss,
    weighted_mse_loss,
)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def per_element(name, d, beta=None, gamma=1.0, activate="sigmoid"):
    """One element's loss, d = prediction - target, written from docs/published_behaviour.md §4."""
    a = abs(d)
    if name == "mse":
        return d * d
    if name == "l1":
        return a
    if name == "huber":
        return 0.5 * a * a / beta if a < beta else a - 0.5 * beta
    focal = (2 * sigmoid(beta * a) - 1) ** gamma if activate == "sigmoid" else math.tanh(beta * a) ** gamma
    return (d * d if name == "focal_mse" else a) * focal


def reference(name, inputs, targets, weights, **kw):
    d = (inputs - targets).reshape(-1).tolist()
    w = [1.0] * len(d) if weights is None else weights.reshape(-1).tolist()
    return sum(wi * per_element(name, di, **kw) for di, wi in zip(d, w)) / len(d)


def batch(n=37, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 1, generator=gen, dtype=torch.float64) * 4
    targets = torch.randn(n, 1, generator=gen, dtype=torch.float64) * 4
    weights = torch.rand(n, 1, generator=gen, dtype=torch.float64) * 2
    return inputs, targets, weights


@pytest.mark.parametrize("with_weights", [False, True])
def test_mse_and_l1_match_formula(with_weights):
    inputs, targets, weights = batch()
    w = weights if with_weights else None
    assert weighted_mse_loss(inputs, targets, w).item() == pytest.approx(reference("mse", inputs, targets, w))
    assert weighted_l1_loss(inputs, targets, w).item() == pytest.approx(reference("l1", inputs, targets, w))


@pytest.mark.parametrize("fn,name", [(weighted_focal_mse_loss, "focal_mse"), (weighted_focal_l1_loss, "focal_l1")])
@pytest.mark.parametrize("activate,beta,gamma", [("sigmoid", 0.2, 1), ("sigmoid", 1.0, 2), ("tanh", 0.2, 1),
                                                 ("tanh", 0.5, 3)])
def test_focal_losses_match_formula(fn, name, activate, beta, gamma):
    inputs, targets, weights = batch(seed=1)
    for w in (None, weights):
        got = fn(inputs, targets, w, activate=activate, beta=beta, gamma=gamma).item()
        assert got == pytest.approx(reference(name, inputs, targets, w, beta=beta, gamma=gamma, activate=activate))


def test_focal_defaults_are_sigmoid_beta_02_gamma_1():
    inputs, targets, weights = batch(seed=2)
    assert weighted_focal_l1_loss(inputs, targets, weights).item() == pytest.approx(
        reference("focal_l1", inputs, targets, weights, beta=0.2, gamma=1, activate="sigmoid"))
    assert weighted_focal_mse_loss(inputs, targets, weights).item() == pytest.approx(
        reference("focal_mse", inputs, targets, weights, beta=0.2, gamma=1, activate="sigmoid"))


@pytest.mark.parametrize("beta", [1.0, 0.3, 2.5])
def test_huber_matches_formula(beta):
    inputs, targets, weights = batch(seed=3)
    for w in (None, weights):
        assert weighted_huber_loss(inputs, targets, w, beta=beta).item() == pytest.approx(
            reference("huber", inputs, targets, w, beta=beta))
    assert weighted_huber_loss(inputs, targets).item() == pytest.approx(reference("huber", inputs, targets, None,
                                                                                  beta=1.0))


def test_unit_weights_match_torch_functional():
    inputs, targets, _ = batch(seed=4)
    ones = torch.ones_like(inputs)
    for w in (None, ones):
        torch.testing.assert_close(weighted_mse_loss(inputs, targets, w), F.mse_loss(inputs, targets))
        torch.testing.assert_close(weighted_l1_loss(inputs, targets, w), F.l1_loss(inputs, targets))
        for beta in (1.0, 0.3):
            torch.testing.assert_close(weighted_huber_loss(inputs, targets, w, beta=beta),
                                       F.smooth_l1_loss(inputs, targets, beta=beta))


def test_huber_branch_boundary():
    # |d| < beta -> quadratic; |d| == beta -> linear branch (both give beta / 2 there)
    t = torch.zeros(3, dtype=torch.float64)
    loss = weighted_huber_loss(torch.tensor([0.1, 0.3, 1.0], dtype=torch.float64), t, beta=0.3)
    assert loss.item() == pytest.approx((0.5 * 0.01 / 0.3 + 0.15 + (1.0 - 0.15)) / 3)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_per_sample_weights_of_shape_b_equal_b_by_1(name):
    inputs, targets, weights = batch(seed=5)
    fn = get_loss(name)
    torch.testing.assert_close(fn(inputs, targets, weights.reshape(-1)), fn(inputs, targets, weights))
    # 1-D predictions and targets work too
    torch.testing.assert_close(fn(inputs.reshape(-1), targets.reshape(-1), weights.reshape(-1)),
                               fn(inputs, targets, weights))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_matches_weighted_formula(name):
    inputs, targets, weights = batch(n=11, seed=6)
    inputs.requires_grad_(True)
    loss = get_loss(name)(inputs, targets, weights)
    loss.backward()
    # central differences of the plain-loop reference
    h = 1e-6
    kw = {"beta": 1.0} if name == "huber" else {"beta": 0.2, "gamma": 1.0} if name.startswith("focal") else {}
    for i in range(len(inputs)):
        plus, minus = inputs.detach().clone(), inputs.detach().clone()
        plus[i] += h
        minus[i] -= h
        numeric = (reference(name, plus, targets, weights, **kw) - reference(name, minus, targets, weights, **kw)) / (2 * h)
        assert inputs.grad[i].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_float32_result_is_a_scalar():
    inputs, targets, weights = (t.float() for t in batch())
    for name in LOSSES:
        loss = get_loss(name)(inputs, targets, weights)
        assert loss.dim() == 0 and loss.dtype == torch.float32


def test_get_loss_names():
    assert set(LOSSES) == {"mse", "l1", "focal_mse", "focal_l1", "huber"}
    assert get_loss("focal_l1") is weighted_focal_l1_loss and get_loss("huber") is weighted_huber_loss
    with pytest.raises(ValueError, match="--loss 'smooth_l1'"):
        get_loss("smooth_l1")


def test_bad_arguments_raise_value_errors():
    inputs, targets, weights = batch(n=4)
    with pytest.raises(ValueError, match="same shape"):
        weighted_mse_loss(inputs, targets.reshape(-1))  # [B, 1] vs [B] would broadcast to [B, B]
    with pytest.raises(ValueError, match="weights"):
        weighted_l1_loss(inputs, targets, weights[:3])
    with pytest.raises(ValueError, match="activate='relu'"):
        weighted_focal_l1_loss(inputs, targets, activate="relu")
    with pytest.raises(ValueError, match="beta=0"):
        weighted_huber_loss(inputs, targets, beta=0)
