"""RankSim as train.py uses it (`from ranking import batchwise_ranking_regularizer`), and the blackbox
ranker it is built on (TrueRanker, rank, rank_normalised); defined in the library (ranksim/)."""
from ranksim.ranking import TrueRanker, rank, rank_normalised
from ranksim.regularizer import batchwise_ranking_regularizer

__all__ = ["TrueRanker", "batchwise_ranking_regularizer", "rank", "rank_normalised"]
