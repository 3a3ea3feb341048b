"""Ordinal Entropy (ranksim.ordinal_entropy) against a loop over labels and label pairs of the formulas."""
import math

import numpy as np
import pytest
import torch

from ranksim import OrdinalEntropy, ordinal_entropy, ordinal_entropy_terms


def loop_terms(z, y):
    """(L_d, L_t) written out: centres per distinct label, pairs m < n, tightness per sample (floats)."""
    z, y = np.asarray(z, dtype=np.float64), [float(v) for v in y]
    labels = sorted(set(y))
    unit = {}
    for u in labels:
        members = [z[i] for i in range(len(y)) if y[i] == u]
        centre = sum(members) / len(members)
        unit[u] = centre / math.sqrt(sum(c * c for c in centre))
    pairs = [(m, n) for a, m in enumerate(labels) for n in labels[a + 1:]]
    diversity = 0.0
    if pairs:
        gaps = [abs(m - n) for m, n in pairs]
        for (m, n), gap in zip(pairs, gaps):
            weight = (gap - min(gaps)) / max(gaps)
            diversity -= weight * math.sqrt(sum((a - b) ** 2 for a, b in zip(unit[m], unit[n])))
        diversity /= len(pairs)
    distances = []
    for i in range(len(y)):
        norm = math.sqrt(sum(v * v for v in z[i]))
        distance = math.sqrt(sum((v / norm - c) ** 2 for v, c in zip(z[i], unit[y[i]])))
        if y.count(y[i]) > 1 and distance > 0:  # a label seen once has distance 0 (up to rounding)
            distances.append(distance)
    tightness = sum(distances) / len(distances) if distances else 0.0
    return diversity, tightness


def case(seed, labels, dim=6):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), dim, generator=generator, dtype=torch.float64), torch.tensor(labels, dtype=torch.float64)


@pytest.mark.parametrize("labels", [
    [3, 1, 4, 1, 5, 9, 2, 6, 5, 3],      # repeated and single labels, unsorted
    [20, 20, 21, 35, 35, 35, 60, 61],    # non-uniform gaps: min gap 1
    [0.2, 0.4, 0.4, 3.8, 5.0, 5.0],      # STS-B-like scores
])
def test_terms_match_the_loop(labels):
    z, y = case(0, labels)
    diversity, tightness = ordinal_entropy_terms(z, y)
    expected_d, expected_t = loop_terms(z.numpy(), y.tolist())
    assert diversity.item() == pytest.approx(expected_d, rel=1e-5, abs=1e-7)
    assert tightness.item() == pytest.approx(expected_t, rel=1e-5)
    assert expected_d < 0 and expected_t > 0  # the cases exercise both terms


def test_lambdas_weight_the_terms_and_column_labels_are_accepted():
    z, y = case(1, [1, 1, 2, 5, 5, 9])
    diversity, tightness = loop_terms(z.numpy(), y.tolist())
    value = ordinal_entropy(z, y.unsqueeze(1), lambda_d=0.3, lambda_t=2.0)
    assert value.item() == pytest.approx(0.3 * diversity + 2.0 * tightness, rel=1e-5)
    assert OrdinalEntropy()(z, y).item() == pytest.approx(diversity + tightness, rel=1e-5)


def test_gradient_matches_finite_differences_of_the_loop():
    z, y = case(2, [1, 1, 2, 4, 4, 7])
    z.requires_grad_(True)
    ordinal_entropy(z, y).backward()
    numeric = np.zeros(z.shape)
    base = z.detach().numpy()
    for index in np.ndindex(*z.shape):
        up, down = base.copy(), base.copy()
        up[index] += 1e-6
        down[index] -= 1e-6
        numeric[index] = (sum(loop_terms(up, y.tolist())) - sum(loop_terms(down, y.tolist()))) / 2e-6
    np.testing.assert_allclose(z.grad.numpy(), numeric, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("labels, empty", [
    ([4, 4, 4, 4], "diversity"),     # M = 1: no pair
    ([2, 2, 7, 7], "diversity"),     # M = 2: its one pair weighs 0
    ([1, 2, 3, 4], "tightness"),     # every label seen once
])
def test_empty_terms_are_zero_with_finite_gradients(labels, empty):
    z, y = case(3, labels)
    z.requires_grad_(True)
    diversity, tightness = ordinal_entropy_terms(z, y)
    assert {"diversity": diversity, "tightness": tightness}[empty].item() == 0.0
    (diversity + tightness).backward()
    assert torch.isfinite(z.grad).all()


def test_identical_features_of_one_label_are_dropped_with_a_finite_gradient():
    z, y = case(7, [3, 3, 5, 5, 5, 8])
    z[1] = z[0]  # label 3: both samples sit on their centre, t = 0 exactly
    z.requires_grad_(True)
    diversity, tightness = ordinal_entropy_terms(z, y)
    assert tightness.item() == pytest.approx(loop_terms(z.detach().numpy(), y.tolist())[1], rel=1e-5)
    (diversity + tightness).backward()
    assert torch.isfinite(z.grad).all()


def test_invariant_to_batch_order_and_label_scale():
    z, y = case(4, [5, 1, 5, 3, 9, 1, 9, 9])
    reference = ordinal_entropy(z, y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    assert ordinal_entropy(z[order], y[order]).item() == pytest.approx(reference.item(), rel=1e-6)  # float32 sums
    assert ordinal_entropy(z, y / 5).item() == pytest.approx(reference.item(), rel=1e-6)  # float32 sums


def test_half_precision_features_give_a_float32_loss():
    z, y = case(5, [1, 1, 2, 3, 3])
    value = ordinal_entropy(z.to(torch.bfloat16), y)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(ordinal_entropy(z.to(torch.bfloat16).double(), y).item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the matmuls must not drop to 16 bits
        under_autocast = ordinal_entropy(z.float(), y.float())
    assert under_autocast.item() == pytest.approx(ordinal_entropy(z, y).item(), rel=1e-6)


@pytest.mark.parametrize("features, labels, message", [
    (torch.zeros(4), torch.zeros(4), r"features: expected \[B, D\]"),
    (torch.zeros(4, 3), torch.zeros(4, 2), r"labels: expected \[B\] or \[B, 1\]"),
    (torch.zeros(4, 3), torch.zeros(5), "B = 4"),
])
def test_bad_shapes_are_refused(features, labels, message):
    with pytest.raises(ValueError, match=message):
        ordinal_entropy(features, labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    z, y = case(6, [1, 1, 2, 3, 3, 8])
    assert ordinal_entropy(z.cuda(), y.cuda()).item() == pytest.approx(ordinal_entropy(z, y).item(), rel=1e-6)
