"""The package's public names (issue 2: `from ranksim import ...` must keep working)."""
import torch

import ranksim


def test_public_names_are_the_library_objects():
    from ranksim.fds import FDS
    from ranksim.ranking import TrueRanker, rank, rank_normalised
    from ranksim.regularizer import batchwise_ranking_regularizer

    assert ranksim.FDS is FDS
    assert ranksim.TrueRanker is TrueRanker
    assert ranksim.rank is rank
    assert ranksim.rank_normalised is rank_normalised
    assert ranksim.batchwise_ranking_regularizer is batchwise_ranking_regularizer


def test_top_level_regularizer_runs_on_a_batch():
    torch.manual_seed(0)
    features = torch.randn(8, 5, requires_grad=True)
    targets = torch.arange(8, dtype=torch.float32)
    loss = ranksim.batchwise_ranking_regularizer(features, targets, 2.0)
    loss.backward()
    assert loss.ndim == 0 and loss.item() > 0
    assert features.grad is not None and torch.isfinite(features.grad).all()
