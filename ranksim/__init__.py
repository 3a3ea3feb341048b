"""RankSim: ranking similarity regularization for deep imbalanced regression.

A clean-room PyTorch reimplementation of Gong, Mori and Tung (ICML 2022) and of the
deep-imbalanced-regression baselines it builds on (Yang et al., ICML 2021). The benchmark folders
(agedb-dir/, imdb-wiki-dir/, sts-b-dir/) import everything they share from here.

    from ranksim import RankSim
    ranksim_loss = RankSim(gamma=1.0, interp_strength_lambda=2.0)  # targets [B], [B, 1] or [B, d]
    loss = base_loss + ranksim_loss(features, targets)

docs/library.md describes every public name.
"""
from ranksim.balanced_mse import BalancedMSELoss, bmc_loss, bni_loss, gai_loss
from ranksim.bins import Binning
from ranksim.contrastive import conr_loss, rnc_loss
from ranksim.denseweight import DenseWeight, dense_weights
from ranksim.diagnostics import gradient_ratio, health_report, mean_cosine, rank_agreement
from ranksim.distributed import GatheredRankSim, all_gather_with_grad, gather_global_batch
from ranksim.fds import FDS
from ranksim.ordinal_entropy import OrdinalEntropy, ordinal_entropy, ordinal_entropy_terms
from ranksim.ranking import TrueRanker, rank, rank_normalised
from ranksim.regularizer import RankSim, batchwise_ranking_regularizer, reduce_ties

__all__ = [
    "FDS", "BalancedMSELoss", "Binning", "GatheredRankSim", "RankSim", "TrueRanker", "all_gather_with_grad",
    "batchwise_ranking_regularizer", "bmc_loss", "bni_loss", "conr_loss", "gai_loss", "gather_global_batch", "rank",
    "rank_normalised",
    "gradient_ratio", "health_report", "mean_cosine", "rank_agreement",
    "reduce_ties", "rnc_loss",
    "DenseWeight", "OrdinalEntropy", "dense_weights", "ordinal_entropy", "ordinal_entropy_terms",
]
__version__ = "0.1.0"
