"""The paper's module name for the losses: `from loss import weighted_focal_l1_loss`.

Defined in ranksim.losses (weighted mse, l1, focal_mse, focal_l1, huber; LOSSES, get_loss).
"""
from ranksim.losses import *  # noqa: F401,F403
