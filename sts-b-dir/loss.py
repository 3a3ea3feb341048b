"""The paper's module name for the losses: `from loss import weighted_mse_loss` (ranksim.losses)."""
from ranksim.losses import (
    LOSSES,
    get_loss,
    weighted_focal_l1_loss,
    weighted_focal_mse_loss,
    weighted_huber_loss,
    weighted_l1_loss,
    weighted_mse_loss,
)

__all__ = ["LOSSES", "get_loss", "weighted_focal_l1_loss", "weighted_focal_mse_loss", "weighted_huber_loss",
           "weighted_l1_loss", "weighted_mse_loss"]
