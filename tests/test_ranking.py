"""rank / rank_normalised / TrueRanker against plain-Python references (docs/published_behaviour.md §1.4-1.5)."""
import pytest
import torch

from ranksim.ranking import TrueRanker, masked_true_rank, rank, rank_normalised


def reference_rank_row(values):
    """Descending 0-based ranks of a list; among equal values the larger index comes first."""
    order = sorted(range(len(values)), key=lambda j: (-values[j], -j))
    ranks = [0] * len(values)
    for position, j in enumerate(order):
        ranks[j] = position
    return ranks


def reference_rank_normalised(matrix):
    """Row-wise (rank + 1) / m of a 2-D tensor, computed with Python lists (float32 tensor)."""
    rows = [[(r + 1) / len(row) for r in reference_rank_row(row)] for row in matrix.tolist()]
    return torch.tensor(rows, dtype=torch.float32)


def test_rank_hand_example_ties_larger_index_first():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 0.0]])
    # Row 0 descending: 3 (index 2), 3 (index 1), 2 (index 3), 1 (index 0).
    assert rank(x).tolist() == [[3, 1, 0, 2], [2, 1, 0, 3]]
    assert rank(x).dtype == torch.int64
    assert torch.equal(rank_normalised(x), torch.tensor([[4, 2, 1, 3], [3, 2, 1, 4]]) / 4.0)
    assert rank_normalised(x).dtype == torch.float32


def test_rank_matches_list_reference_on_many_rows_with_ties():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (50, 17), generator=gen).float()  # many ties per row
    expected = torch.tensor([reference_rank_row(row) for row in x.tolist()])
    assert torch.equal(rank(x), expected)
    assert torch.equal(rank_normalised(x), reference_rank_normalised(x))
    # Equivalent closed form from docs/published_behaviour.md §1.4: argsort(argsort(v, stable) flipped).
    closed_form = torch.argsort(torch.argsort(x, dim=1, stable=True).flip(1), dim=1)
    assert torch.equal(rank(x), closed_form)


def test_rank_rejects_non_2d_input():
    with pytest.raises(ValueError, match="x: expected a 2-D tensor"):
        rank(torch.zeros(3))
    with pytest.raises(ValueError, match="x: expected a 2-D tensor"):
        rank_normalised(torch.zeros(2, 3, 4))


def test_true_ranker_backward_hand_computed():
    scores = torch.tensor([[0.1, 0.5, 0.3]], requires_grad=True)
    ranks = TrueRanker.apply(scores, 2.0)
    # Descending order 0.5, 0.3, 0.1 -> ranks [2, 0, 1] -> (rank + 1) / 3.
    assert torch.allclose(ranks, torch.tensor([[1.0, 1 / 3, 2 / 3]]))
    ranks.backward(torch.tensor([[0.3, 0.0, 0.0]]))
    # s' = s + 2 g = [0.7, 0.5, 0.3] -> r' = [1/3, 2/3, 1]; grad = -(r - r') / 2.
    expected = torch.tensor([[-1 / 3, 1 / 6, 1 / 6]])
    assert torch.allclose(scores.grad, expected, rtol=1e-6, atol=1e-6)


def test_true_ranker_backward_zero_when_perturbation_keeps_order():
    scores = torch.tensor([[0.1, 0.5, 0.3]], requires_grad=True)
    TrueRanker.apply(scores, 2.0).backward(torch.tensor([[-0.3, 0.2, 0.0]]))
    assert torch.equal(scores.grad, torch.zeros(1, 3))


@pytest.mark.parametrize("lambda_val", [0.5, 2.0, 10.0])
def test_true_ranker_matches_formula_on_random_rows(lambda_val):
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 9, generator=gen, requires_grad=True)
    incoming = torch.randn(6, 9, generator=gen) * 0.5
    ranks = TrueRanker.apply(scores, lambda_val)
    assert torch.equal(ranks, reference_rank_normalised(scores.detach()))
    ranks.backward(incoming)
    perturbed = reference_rank_normalised(scores.detach() + lambda_val * incoming)
    expected = -(reference_rank_normalised(scores.detach()) - perturbed) / (lambda_val + 1e-8)
    assert torch.allclose(scores.grad, expected, rtol=1e-6, atol=1e-7)
    assert scores.grad.abs().sum() > 0  # the perturbation did reorder something


def test_true_ranker_half_precision_scores():
    scores = torch.tensor([[0.1, 0.5, 0.3]], dtype=torch.float16, requires_grad=True)
    ranks = TrueRanker.apply(scores, 2.0)
    assert ranks.dtype == torch.float32
    ranks.backward(torch.tensor([[0.3, 0.0, 0.0]]))
    assert scores.grad.dtype == torch.float16
    assert torch.allclose(scores.grad.float(), torch.tensor([[-1 / 3, 1 / 6, 1 / 6]]), atol=1e-3)


def test_masked_true_rank_equals_true_ranker_on_kept_columns():
    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(4, 7, generator=gen)
    incoming = torch.randn(4, 7, generator=gen)
    keep_columns = torch.tensor([True, False, True, True, False, True, True])
    kept = keep_columns.nonzero()[:, 0]

    masked_scores = scores.clone().requires_grad_(True)
    keep = keep_columns[None, :].expand(4, 7)
    masked = masked_true_rank(masked_scores, 3.0, keep, keep_columns.sum())
    (masked * incoming).sum().backward()  # incoming gradient also on dropped entries

    plain_scores = scores[:, kept].clone().requires_grad_(True)
    plain = TrueRanker.apply(plain_scores, 3.0)
    (plain * incoming[:, kept]).sum().backward()

    assert torch.equal(masked[:, kept], plain)
    assert torch.allclose(masked_scores.grad[:, kept], plain_scores.grad, rtol=1e-6, atol=1e-7)
    assert torch.equal(masked_scores.grad[:, ~keep_columns], torch.zeros(4, 2))
