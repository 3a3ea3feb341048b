"""RankSim: ranking similarity regularization for deep imbalanced regression.

A clean-room PyTorch reimplementation of Gong, Mori and Tung (ICML 2022) and of the
deep-imbalanced-regression baselines it builds on (Yang et al., ICML 2021). The benchmark folders
(agedb-dir/, imdb-wiki-dir/, sts-b-dir/) import everything they share from here.

    from ranksim import batchwise_ranking_regularizer
    loss = base_loss + gamma * batchwise_ranking_regularizer(features, targets, interp_strength_lambda=2.0)
"""
from ranksim.balanced_mse import BalancedMSELoss, bmc_loss, bni_loss, gai_loss
from ranksim.contrastive import conr_loss, rnc_loss
from ranksim.fds import FDS
from ranksim.ranking import TrueRanker, rank, rank_normalised
from ranksim.regularizer import batchwise_ranking_regularizer, reduce_ties

__all__ = [
    "FDS", "BalancedMSELoss", "TrueRanker", "batchwise_ranking_regularizer", "bmc_loss", "bni_loss", "conr_loss",
    "gai_loss", "rank", "rank_normalised", "reduce_ties", "rnc_loss",
]
__version__ = "0.1.0"
