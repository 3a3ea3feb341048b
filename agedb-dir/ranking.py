"""The paper's module names for ranking: `from ranking import TrueRanker, rank_normalised`.

Defined in ranksim.ranking; the regularizer (the published code's `ranksim.py`, here the package
itself) is re-exported too: `from ranking import batchwise_ranking_regularizer`.
"""
from ranksim.ranking import TrueRanker, rank, rank_normalised
from ranksim.regularizer import batchwise_ranking_regularizer

__all__ = ["TrueRanker", "rank", "rank_normalised", "batchwise_ranking_regularizer"]
