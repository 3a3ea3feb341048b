"""The paper's module names for ranking: `from ranking import TrueRanker, rank_normalised`.

The regularizer is re-exported too: `from ranking import batchwise_ranking_regularizer`.
"""
from ranksim.ranking import TrueRanker, rank, rank_normalised
from ranksim.regularizer import batchwise_ranking_regularizer

__all__ = ["TrueRanker", "rank", "rank_normalised", "batchwise_ranking_regularizer"]
