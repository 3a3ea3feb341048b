"""The losses train.py uses (`from loss import get_loss`) and the published module's names
(`from loss import weighted_focal_l1_loss`): weighted MSE/L1, Focal-R and Huber losses
(docs/published_behaviour.md §4), defined in the library (ranksim/losses.py)."""
from ranksim.losses import (
    LOSSES,
    get_loss,
    published_age_loss,
    weighted_focal_l1_loss,
    weighted_focal_mse_loss,
    weighted_huber_loss,
    weighted_l1_loss,
    weighted_mse_loss,
)

__all__ = ["LOSSES", "get_loss", "published_age_loss", "weighted_focal_l1_loss", "weighted_focal_mse_loss",
           "weighted_huber_loss", "weighted_l1_loss", "weighted_mse_loss"]
