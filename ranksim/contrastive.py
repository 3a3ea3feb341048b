"""Contrastive losses of two later deep-imbalanced-regression methods, on 2B stacked view samples.

``conr_loss``: ConR (Keramati, Meng and Evans, ICLR 2024), a regularizer added to the regression
loss (like RankSim, and combinable with it): label-neighbours are pulled together, and pairs the
model confuses (far labels, close predictions) are pushed apart with a weight growing with the label
distance and the anchor's imbalance weight.

``rnc_loss``: Rank-N-Contrast (Zha et al., NeurIPS 2023), a representation loss of a first training
stage: for anchor i and every other sample j, j's similarity competes against the samples at least
as far from i in label as j is, which orders the features by label distance.

Both take the two augmented views of a batch stacked (rows 0..B-1 view 1, B..2B-1 view 2), so the
two views of an image are positives of each other like any other pair.
"""
import torch
import torch.nn.functional as F

__all__ = ["conr_loss", "rnc_loss"]


def _check_rows(features: torch.Tensor, **per_sample: torch.Tensor) -> None:
    if features.dim() != 2:
        raise ValueError(f"features: expected [N, D] (the 2B view samples stacked), got {tuple(features.shape)}")
    for name, tensor in per_sample.items():
        if tensor.dim() != 2 or tensor.shape[0] != features.shape[0]:
            raise ValueError(f"{name}: expected [N, d] with N = {features.shape[0]} rows (as features), "
                             f"got {tuple(tensor.shape)}")


def conr_loss(features: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor, weights: torch.Tensor,
              omega: float = 1.0, tau: float = 0.2, e: float = 0.01) -> torch.Tensor:
    """ConR in the paper's form over N = 2B view samples (self pairs excluded).

    features [N, D] (L2-normalised here), targets [N, d], preds [N, d] (detached here), weights [N, 1]
    (the re-weighting weights w_i; ones without re-weighting). Label and prediction distances are L1.
    j is a positive of anchor i when |y_i - y_j| <= omega, a negative when |y_i - y_j| > omega and
    |p_i - p_j| <= omega. With s_ij = z_i . z_j / tau and eta_ij = w_i exp(e |y_i - y_j|):
    l_i = mean_{j in P(i)} -log(exp(s_ij) / (sum_{k in P(i)} exp(s_ik) + sum_{k in N(i)} eta_ik exp(s_ik)))
    and the loss is mean_i w_i l_i over all N anchors, an anchor without a positive or without a
    negative contributing 0. Cost O(N^2 D) time, O(N^2) memory.

    The reference code differs: its AgeDB loss uses tau = 0.07 whatever is passed, and its denominator
    sums exp over the whole row with non-positive, non-negative columns zeroed (each adding exp(0) = 1).
    """
    _check_rows(features, targets=targets, preds=preds, weights=weights)
    n = features.shape[0]
    z = F.normalize(features, dim=1)
    similarity = z @ z.t() / tau
    label_distance = torch.cdist(targets.float(), targets.float(), p=1)
    pred_distance = torch.cdist(preds.detach().float(), preds.detach().float(), p=1)
    other = ~torch.eye(n, dtype=torch.bool, device=features.device)
    positive = (label_distance <= omega) & other
    negative = (label_distance > omega) & (pred_distance <= omega) & other
    counted = positive.any(dim=1) & negative.any(dim=1)
    # log of each column's multiplier in the denominator: 1 for positives, eta for negatives, 0 otherwise
    log_eta = torch.log(weights.float()) + e * label_distance
    log_multiplier = torch.where(positive, torch.zeros_like(log_eta),
                                 torch.where(negative, log_eta, torch.full_like(log_eta, float("-inf"))))
    # rows that do not count get a finite dummy row, so that no -inf-only logsumexp poisons the gradient
    log_multiplier = torch.where(counted.unsqueeze(1), log_multiplier, torch.zeros_like(log_multiplier))
    log_denominator = torch.logsumexp(similarity + log_multiplier, dim=1)  # [N]
    positive_f = positive.float()
    positive_sum = (positive_f * similarity).sum(dim=1)
    per_anchor = log_denominator - positive_sum / positive_f.sum(dim=1).clamp(min=1)
    per_anchor = torch.where(counted, per_anchor * weights.float().squeeze(1), torch.zeros_like(per_anchor))
    return per_anchor.mean()


def rnc_loss(features: torch.Tensor, labels: torch.Tensor, tau: float = 2.0) -> torch.Tensor:
    """Rank-N-Contrast over N = 2B view samples, in O(N^2 log N).

    features [N, D], labels [N, d]. d_ij = ||y_i - y_j||_1, s_ij = -||z_i - z_j||_2 / tau; for every
    ordered pair i != j: l_ij = -log(exp(s_ij) / sum_{k != i, d_ik >= d_ij} exp(s_ik)); the loss is the
    mean over the N (N - 1) pairs.

    Each row is sorted once by label distance (descending); a cumulative logsumexp along it then gives
    every denominator, read at the last column of j's tie group (all k with d_ik = d_ij count). The
    reference code loops over the columns instead (O(N^3)); the values are the same.
    """
    _check_rows(features, labels=labels)
    n = features.shape[0]
    if n < 2:
        raise ValueError("rnc_loss: needs at least 2 samples (one pair)")
    similarity = -torch.cdist(features, features, p=2, compute_mode="donot_use_mm_for_euclid_dist") / tau
    distance = torch.cdist(labels.float(), labels.float(), p=1)
    # The anchor itself gets distance -1 < every real distance: it sorts last, into its own tie group,
    # so it never enters another column's denominator and its column is dropped below.
    distance = distance.masked_fill(torch.eye(n, dtype=torch.bool, device=features.device), -1.0)
    order = torch.argsort(distance, dim=1, descending=True)
    sorted_similarity = similarity.gather(1, order)
    cumulative = torch.logcumsumexp(sorted_similarity, dim=1)
    ascending = -distance.gather(1, order)  # sorted ascending, as searchsorted needs
    group_end = torch.searchsorted(ascending.contiguous(), ascending.contiguous(), right=True) - 1
    denominators = cumulative.gather(1, group_end)
    return (denominators - sorted_similarity)[:, :-1].mean()
