"""ConR and Rank-N-Contrast (ranksim.contrastive) against per-pair loops of the papers' formulas."""
import math

import numpy as np
import pytest
import torch

from ranksim import conr_loss, rnc_loss

RTOL = 1e-5


def loop_conr(z, y, p, w, omega, tau, e):
    """The ConR formula anchor by anchor, pair by pair (z normalised here, lists of floats)."""
    n = len(z)
    z = [np.asarray(v) / np.linalg.norm(v) for v in z]
    total = 0.0
    for i in range(n):
        pos = [j for j in range(n) if j != i and abs(y[i] - y[j]) <= omega]
        neg = [j for j in range(n) if j != i and abs(y[i] - y[j]) > omega and abs(p[i] - p[j]) <= omega]
        if not pos or not neg:
            continue
        s = [float(z[i] @ z[k]) / tau for k in range(n)]
        den = sum(math.exp(s[k]) for k in pos) + sum(w[i] * math.exp(e * abs(y[i] - y[k])) * math.exp(s[k])
                                                     for k in neg)
        total += w[i] * sum(-math.log(math.exp(s[j]) / den) for j in pos) / len(pos)
    return total / n


def loop_rnc(z, y, tau):
    """The RnC formula: for every pair (i, j), i != j, the denominator over k != i with d_ik >= d_ij."""
    n = len(z)
    z = [np.asarray(v) for v in z]
    dist = lambda a, b: float(np.abs(np.asarray(y[a]) - np.asarray(y[b])).sum())  # noqa: E731
    sim = lambda a, b: -float(np.linalg.norm(z[a] - z[b])) / tau  # noqa: E731
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            den = sum(math.exp(sim(i, k)) for k in range(n) if k != i and dist(i, k) >= dist(i, j))
            total += -math.log(math.exp(sim(i, j)) / den)
    return total / (n * (n - 1))


def numeric_grad(fn, x, eps=1e-6):
    flat = x.reshape(-1)
    grad = np.zeros_like(flat)
    for i in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[i] += eps
        down[i] -= eps
        grad[i] = (fn(up.reshape(x.shape)) - fn(down.reshape(x.shape))) / (2 * eps)
    return grad.reshape(x.shape)


def conr_case(n=10, d=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=n).astype(np.float64)
    preds = 0.3 * labels + rng.normal(0, 0.3, size=n)  # compressed predictions: confused pairs are common
    return rng.normal(size=(n, d)), labels, preds, rng.uniform(0.5, 2.0, size=n)


def run_conr(z, y, p, w, **kw):
    f = torch.tensor(z, requires_grad=True)
    col = lambda v: torch.tensor(v).reshape(-1, 1)  # noqa: E731
    loss = conr_loss(f, col(y), col(p), col(w), **kw)
    loss.backward()
    return loss, f.grad.numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conr_matches_loop_value_and_gradient(seed):
    z, y, p, w = conr_case(seed=seed)
    kw = dict(omega=1.0, tau=0.2, e=0.01)
    loss, grad = run_conr(z, y, p, w, **kw)
    assert loss.item() == pytest.approx(loop_conr(z, y, p, w, **kw), rel=RTOL)
    expected = numeric_grad(lambda f: loop_conr(f, y, p, w, **kw), z)
    np.testing.assert_allclose(grad, expected, rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conr_cases_have_counted_anchors(seed):
    # guard of the test above: the loss is not trivially 0 and most anchors have a negative
    z, y, p, w = conr_case(seed=seed)
    assert loop_conr(z, y, p, w, 1.0, 0.2, 0.01) > 0
    with_negative = [i for i in range(len(y)) if any(abs(y[i] - y[j]) > 1 and abs(p[i] - p[j]) <= 1
                                                     for j in range(len(y)))]
    assert len(with_negative) >= len(y) // 2


def test_conr_edge_cases_are_zero_with_finite_gradients():
    z, _, _, _ = conr_case(n=6)
    # one distinct label: every pair is a positive, no negative -> 0
    loss, grad = run_conr(z, np.full(6, 3.0), np.zeros(6), np.ones(6))
    assert loss.item() == 0 and np.isfinite(grad).all() and np.all(grad == 0)
    # far labels, far predictions: no positive, no negative -> 0
    y = np.arange(6) * 10.0
    loss, grad = run_conr(z, y, y, np.ones(6))
    assert loss.item() == 0 and np.all(grad == 0)
    # B = 1: two views of one image are each other's positive, with no negative -> 0
    loss, grad = run_conr(z[:2], np.array([5.0, 5.0]), np.array([5.0, 5.0]), np.ones(2))
    assert loss.item() == 0 and np.isfinite(grad).all()


def test_conr_detaches_predictions():
    z, y, p, w = conr_case()
    preds = torch.tensor(p).reshape(-1, 1).requires_grad_()
    col = lambda v: torch.tensor(v).reshape(-1, 1)  # noqa: E731
    conr_loss(torch.tensor(z, requires_grad=True), col(y), preds, col(w)).backward()
    assert preds.grad is None


@pytest.mark.parametrize("label_dim", [1, 2])
def test_rnc_matches_loop_value_and_gradient_with_ties(label_dim):
    rng = np.random.default_rng(label_dim)
    z = rng.normal(size=(10, 3))
    y = rng.integers(0, 4, size=(10, label_dim)).astype(np.float64)  # many tied label distances
    f = torch.tensor(z, requires_grad=True)
    loss = rnc_loss(f, torch.tensor(y), tau=2.0)
    loss.backward()
    assert loss.item() == pytest.approx(loop_rnc(z, y.tolist(), 2.0), rel=RTOL)
    expected = numeric_grad(lambda v: loop_rnc(v, y.tolist(), 2.0), z)
    np.testing.assert_allclose(f.grad.numpy(), expected, rtol=RTOL, atol=1e-7)


def test_rnc_edge_cases():
    z = np.random.default_rng(0).normal(size=(6, 3))
    # one distinct label: every denominator is the whole row, so the loss is a mean log-softmax
    f = torch.tensor(z, requires_grad=True)
    loss = rnc_loss(f, torch.zeros(6, 1))
    loss.backward()
    assert loss.item() == pytest.approx(loop_rnc(z, [[0.0]] * 6, 2.0), rel=RTOL)
    assert np.isfinite(f.grad.numpy()).all()
    # B = 1 (two views of one image): one pair each way, its own denominator -> exactly 0
    assert rnc_loss(torch.tensor(z[:2]), torch.tensor([[1.0], [1.0]])).item() == pytest.approx(0.0, abs=1e-12)
    # identical features of two samples (distance 0): the gradient stays finite
    same = torch.tensor(np.vstack([z[:1], z[:1], z[2:4]]), requires_grad=True)
    rnc_loss(same, torch.tensor([[0.0], [1.0], [2.0], [3.0]])).backward()
    assert torch.isfinite(same.grad).all()
    with pytest.raises(ValueError, match="at least 2"):
        rnc_loss(torch.zeros(1, 3), torch.zeros(1, 1))
