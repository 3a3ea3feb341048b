"""FDS: feature distribution smoothing (Yang et al., ICML 2021), with the published state layout.

The module keeps, per label bucket, running statistics (mean and variance per feature dimension)
of the backbone features. At each epoch boundary the statistics are smoothed along the bucket axis
with a kernel window, and during training every sample's features are re-calibrated from its
bucket's statistics to the smoothed ones (a per-dimension affine map).

Buffers (their names and shapes are what checkpoints carry; ``n = bucket_num - bucket_start``):
  epoch [1] (float, starts at ``start_update``), running_mean / running_var,
  running_mean_last_epoch / running_var_last_epoch, smoothed_mean_last_epoch /
  smoothed_var_last_epoch (each [n, feature_dim]; means start at 0, variances at 1),
  num_samples_tracked [n].

Behaviour that is reproduced on purpose (it decides the published numbers):
  * ``update_last_epoch_stats`` makes ``running_*_last_epoch`` the SAME tensor as ``running_*``
    (not a copy), so later in-place updates of the running statistics show through and ``smooth``
    maps from the current running statistics to those smoothed at the last epoch boundary. The
    alias survives ``.to()`` (any device or dtype) (see ``_apply``) and is re-established
    after ``load_state_dict`` exactly when the saved module had it (see ``_load_from_state_dict``).
  * ``smooth`` writes into the feature tensor in place and returns it.

Deliberate deviation from the published code: the published age loops visit only the labels
present in a batch, so labels below ``bucket_start`` join the first bucket only when a label equal
to ``bucket_start`` is present too (else they are dropped), and likewise at the top. Here the
merging is unconditional: every label <= bucket_start is in the first bucket and every label >=
bucket_num - 1 in the last, whatever else the batch holds.
"""
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ranksim.bins import STSB_RANGE, Binning
from ranksim.kernels import KERNELS, kernel_window

LABEL_KINDS = ("age", "stsb")

# Clamp of the variance ratio v2 / v1 in calibration, per label kind.
_VAR_RATIO_CLAMP = {"age": (0.1, 10.0), "stsb": (0.5, 2.0)}


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}: must be an integer >= {minimum}")


# Feature elements per chunk of the per-bucket statistics (rows per chunk = CHUNK_ELEMENTS // D): about
# 2 MB of float32 features, so that each chunk's temporaries stay in cache on CPU (about 6x faster there
# than whole-tensor passes at 12k x 2048). Public so that tests can shrink it to cover several chunks.
CHUNK_ELEMENTS = 1 << 19


def _bucket_mean_var(x: torch.Tensor, rows: torch.Tensor, num_rows: int):
    """Per-row count [R], mean [R, D] and unbiased variance [R, D] (0 for a lone sample, 0 and mean 0
    for an empty row) of the samples x [N, D] grouped by rows [N] (int64 in [0, R)); float32.

    Corrected two-pass algorithm (Chan, Golub & LeVeque): pass 1 sums x per row; pass 2 sums the
    deviations from that mean and their squares, and the deviations' sum removes the first-pass
    mean's rounding error. No E[x^2] - E[x]^2 cancellation. Both passes run over chunks of samples
    with index_add_ (scatter-add), no loop over labels and no host-device sync.
    """
    dim = x.shape[1]
    chunk = max(1, CHUNK_ELEMENTS // max(dim, 1))
    count = torch.bincount(rows, minlength=num_rows).float()
    total = torch.zeros(num_rows, dim, device=x.device)
    for xs, rs in zip(x.split(chunk), rows.split(chunk)):
        total.index_add_(0, rs, xs.float())
    per_count = count.clamp(min=1).unsqueeze(1)
    mean = total / per_count
    dev_sum, sq_dev = torch.zeros_like(total), torch.zeros_like(total)
    for xs, rs in zip(x.split(chunk), rows.split(chunk)):
        deviation = xs.float() - mean.index_select(0, rs)
        dev_sum.index_add_(0, rs, deviation)
        sq_dev.index_add_(0, rs, deviation.square_())
    sq_dev = torch.addcdiv(sq_dev, dev_sum.square(), per_count, value=-1).clamp_(min=0)
    var = sq_dev.div_((count - 1).clamp(min=1).unsqueeze(1))  # unbiased; a lone sample gives 0
    return count, torch.addcdiv(mean, dev_sum, per_count), var


class FDS(nn.Module):
    """Feature distribution smoothing over label buckets.

    Args:
        feature_dim: D, the width of the features being smoothed (2048 for ResNet-50).
        bucket_num, bucket_start: buckets cover labels [bucket_start, bucket_num - 1]; the
            statistics hold ``bucket_num - bucket_start`` rows. Age: 100 / 3 (AgeDB), 100 / 0
            (IMDB-WIKI). STS-B: 50 / 0.
        start_update: first epoch whose features update the running statistics.
        start_smooth: first epoch in which ``smooth`` changes the features.
        kernel, ks, sigma: smoothing window along the bucket axis ('gaussian' | 'triang' |
            'laplace', odd size, width), normalised to sum 1.
        momentum: weight of the old running statistics in each update (0 on the first update).
        label_kind: 'age' (integer-valued labels, bucket = label - bucket_start with merged
            ends) or 'stsb' (scores in [0, 5], ``bucket_num`` equal-width np.histogram bins).
        binning: a ``ranksim.bins.Binning`` for any other labels: its bins are the buckets (leave
            bucket_num and bucket_start out); labels it refuses (outside its range unless it
            clips, NaN) are ignored, as out-of-range STS-B scores are. label_kind still picks the
            variance-ratio clamp ('age': [0.1, 10], 'stsb': [0.5, 2]) and the STS-B empty-bucket fill.
    """

    def __init__(self, feature_dim: int, bucket_num: Optional[int] = None, bucket_start: Optional[int] = None,
                 start_update: int = 0, start_smooth: int = 1, kernel: str = "gaussian",
                 ks: int = 5, sigma: float = 2, momentum: float = 0.9, label_kind: str = "age",
                 binning: Optional[Binning] = None):
        super().__init__()
        if binning is not None:
            if bucket_num is not None or bucket_start is not None:
                raise ValueError(f"bucket_num={bucket_num!r}, bucket_start={bucket_start!r}: a binning defines "
                                 f"the buckets ({binning.num_bins}); leave bucket_num and bucket_start out")
            bucket_num, bucket_start = binning.num_bins, 0
        bucket_num = 100 if bucket_num is None else bucket_num  # the AgeDB-DIR defaults
        bucket_start = 3 if bucket_start is None else bucket_start
        _check_int("feature_dim", feature_dim, 1)
        _check_int("bucket_start", bucket_start, 0)
        _check_int("bucket_num", bucket_num, bucket_start + 1)
        _check_int("start_update", start_update, 0)
        _check_int("start_smooth", start_smooth, 0)
        if label_kind not in LABEL_KINDS:
            raise ValueError(f"label_kind={label_kind!r} is not one of {', '.join(LABEL_KINDS)}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r} is not one of {', '.join(KERNELS)}")
        window = kernel_window(kernel, ks, sigma, normalise="sum")  # validates ks and sigma
        num_buckets = bucket_num - bucket_start
        if ks // 2 >= num_buckets:
            # Reflect padding of (ks - 1) / 2 needs more buckets than that on each side.
            raise ValueError(f"ks={ks}: the FDS kernel must be smaller than twice the number of "
                             f"buckets ({num_buckets}); use ks <= {2 * num_buckets - 1}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum={momentum!r}: must be a number in [0, 1]")

        self.feature_dim = int(feature_dim)
        self.bucket_num = int(bucket_num)
        self.bucket_start = int(bucket_start)
        self.num_buckets = num_buckets
        self.start_update = int(start_update)
        self.start_smooth = int(start_smooth)
        self.kernel, self.ks, self.sigma = kernel, int(ks), sigma
        self.half_ks = (self.ks - 1) // 2
        self.momentum = float(momentum)
        self.label_kind = label_kind
        self.clip_min, self.clip_max = _VAR_RATIO_CLAMP[label_kind]

        # Not persistent: they are derived from the constructor arguments, and checkpoints must
        # hold exactly the published buffer names.
        self.register_buffer("kernel_window", torch.tensor(window, dtype=torch.float32), persistent=False)
        # Labels -> bins -> buckets. Age: one bin per integer from bucket_start, the ends merged
        # (clip). STS-B: np.histogram's float32 bins on [0, 5] (float64 edges would put e.g. 0.6
        # and 3.8 one bin lower than the published code does), the bins below bucket_start merged.
        if binning is not None:
            self.binning = binning
        elif label_kind == "age":
            self.binning = Binning(np.arange(self.bucket_start, self.bucket_num + 1), out_of_range="clip")
        else:
            self.binning = Binning.uniform(*STSB_RANGE, num_bins=self.bucket_num, dtype="float32")
        self._first_bin = self.bucket_start if binning is None and label_kind == "stsb" else 0

        self._tables_cache = None  # see _calibration_tables
        shape = (num_buckets, self.feature_dim)
        self.register_buffer("epoch", torch.zeros(1).fill_(start_update))
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))
        self.register_buffer("running_mean_last_epoch", torch.zeros(shape))
        self.register_buffer("running_var_last_epoch", torch.ones(shape))
        self.register_buffer("smoothed_mean_last_epoch", torch.zeros(shape))
        self.register_buffer("smoothed_var_last_epoch", torch.ones(shape))
        self.register_buffer("num_samples_tracked", torch.zeros(num_buckets))

    def extra_repr(self) -> str:
        return (f"feature_dim={self.feature_dim}, bucket_num={self.bucket_num}, "
                f"bucket_start={self.bucket_start}, label_kind={self.label_kind!r}, "
                f"kernel={self.kernel!r}, ks={self.ks}, sigma={self.sigma}, momentum={self.momentum}")

    # ----------------------------------------------------------------------------------------
    # buckets

    def bucket_of(self, labels: torch.Tensor) -> torch.Tensor:
        """Row of the statistics for each label: int64 [N] in [0, n), or -1 for an ignored label.

        labels: [N] or [N, 1], any real dtype, on any device (the result is on that device).
        Age: floor(label) clamped to [bucket_start, bucket_num - 1], minus bucket_start (so every
        label <= bucket_start shares the first bucket and every label >= bucket_num - 1 the last).
        STS-B: the np.histogram bin of the float32 score among ``bucket_num`` equal bins on [0, 5]
        (the last bin closed, so 5 is in it), floored at bucket_start; scores outside [0, 5] are
        ignored. NaN labels are ignored.
        With ``binning``: its bin (-1 where it refuses the label). No host-device synchronisation.
        """
        bins = self.binning.bin_of_tensor(labels)
        return torch.where(bins < 0, bins, bins.clamp(min=self._first_bin) - self._first_bin)

    def _check_batch(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features: expected shape [N, {self.feature_dim}], got {list(features.shape)}")
        if labels.numel() != features.shape[0]:
            raise ValueError(f"labels: expected {features.shape[0]} labels (one per feature row), "
                             f"got shape {list(labels.shape)}")

    # ----------------------------------------------------------------------------------------
    # the aliasing of running_* and running_*_last_epoch

    def _aliased(self) -> tuple:
        return tuple(self._buffers[f"running_{s}_last_epoch"] is self._buffers[f"running_{s}"]
                     for s in ("mean", "var"))

    def _alias_last_epoch(self, which=(True, True)) -> None:
        for stat, alias in zip(("mean", "var"), which):
            if alias:
                self._buffers[f"running_{stat}_last_epoch"] = self._buffers[f"running_{stat}"]

    def _apply(self, fn, *args, **kwargs):
        # nn.Module._apply maps every buffer entry separately, so a device or dtype move would
        # turn the two names of one tensor into two copies; map once and re-alias afterwards.
        aliased = self._aliased()
        self._tables_cache = None  # drop references to the old tensors
        module = super()._apply(fn, *args, **kwargs)
        self._alias_last_epoch(aliased)
        return module

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Copying two checkpoint entries into one aliased tensor would keep whichever came last,
        # so give each name its own storage for the copy.
        for stat, alias in zip(("mean", "var"), self._aliased()):
            if alias:
                self._buffers[f"running_{stat}_last_epoch"] = self._buffers[f"running_{stat}"].clone()
        n_errors = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if len(error_msgs) > n_errors:
            return
        # A module is aliased exactly when update_last_epoch_stats has run, i.e. when its epoch
        # counter has moved past start_update; such a module always saves equal values under both
        # names. Restore the alias then (the restored module behaves like the saved one); in any
        # other case keep the two tensors separate so no checkpoint value is dropped. The next
        # update_last_epoch_stats re-aliases anyway, as in the published training loop.
        if float(self.epoch[0]) > self.start_update:
            self._alias_last_epoch(tuple(
                torch.equal(self._buffers[f"running_{s}"], self._buffers[f"running_{s}_last_epoch"])
                for s in ("mean", "var")))

    # ----------------------------------------------------------------------------------------
    # statistics

    def _smooth_along_buckets(self, stats: torch.Tensor) -> torch.Tensor:
        """Correlate [n, D] statistics with the kernel window along the bucket axis, reflect padding
        of (ks - 1) / 2 (torch 'reflect': the edge bucket itself is not repeated)."""
        per_dim = stats.t().unsqueeze(1)  # [D, 1, n]: one 1-channel signal per feature dim
        padded = F.pad(per_dim, (self.half_ks, self.half_ks), mode="reflect")
        window = self.kernel_window.to(stats.dtype).view(1, 1, -1)
        return F.conv1d(padded, window).squeeze(1).t()

    @torch.no_grad()
    def update_last_epoch_stats(self, epoch: int) -> bool:
        """At the boundary after ``epoch`` (only when ``epoch == self.epoch + 1``): advance the epoch
        counter, make running_*_last_epoch the running_* tensors themselves, and smooth them along
        the bucket axis into smoothed_*_last_epoch. Returns whether it did so."""
        if epoch != float(self.epoch[0]) + 1:
            return False
        self.epoch += 1
        self._alias_last_epoch()
        self.smoothed_mean_last_epoch.copy_(self._smooth_along_buckets(self.running_mean_last_epoch))
        self.smoothed_var_last_epoch.copy_(self._smooth_along_buckets(self.running_var_last_epoch))
        return True

    @torch.no_grad()
    def update_running_stats(self, features: torch.Tensor, labels: torch.Tensor, epoch: int) -> None:
        """Fold one epoch's features into the running statistics (in place).

        features: [N, feature_dim] (any float dtype; statistics in float32), labels: [N] or [N, 1].
        Skipped when ``epoch < self.epoch``. Per bucket with samples: mean and variance over its
        samples (unbiased; 0 for a single sample), num_samples_tracked += count, running =
        (1 - f) * current + f * running with f = momentum (0 when epoch == start_update).
        STS-B: then every bucket without a sample in this call takes its neighbours' values.
        """
        self._check_batch(features, labels)
        if epoch < float(self.epoch[0]):
            return
        n = self.num_buckets
        x = features.detach().to(self.running_mean.device)
        buckets = self.bucket_of(labels.to(x.device))
        # Ignored samples go to an extra row n that is dropped: no boolean indexing, no sync.
        rows = torch.where(buckets < 0, torch.full_like(buckets, n), buckets)

        count, mean, var = _bucket_mean_var(x, rows, n + 1)
        count, mean, var = count[:n], mean[:n], var[:n]

        self.num_samples_tracked += count.to(self.num_samples_tracked.dtype)
        factor = 0.0 if epoch == self.start_update else self.momentum
        # running = (1 - factor) * current + factor * running as one lerp towards current, with
        # weight 0 (running kept exactly) for buckets without samples. In place: running_*_last_epoch
        # may be these very tensors (see update_last_epoch_stats).
        weight = ((count > 0) * (1.0 - factor)).unsqueeze(1).to(self.running_mean.dtype)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), weight)
        self.running_var.lerp_(var.to(self.running_var.dtype), weight)

        if self.label_kind == "stsb" and n >= 2:
            self._fill_empty_buckets(count == 0)

    def _fill_empty_buckets(self, empty: torch.Tensor) -> None:
        """STS-B: every bucket that got no sample in this call takes its neighbours' statistics,
        visiting the buckets in ascending order (so an empty bucket after an empty one sees the
        value just written there): first <- second, last <- second to last, inner <- mean of both.
        A loop over the (50) buckets, once per epoch, with torch.where so nothing syncs."""
        n = self.num_buckets
        for running in (self.running_mean, self.running_var):
            for b in range(n):
                if b == 0:
                    fill = running[1]
                elif b == n - 1:
                    fill = running[n - 2]
                else:
                    fill = (running[b - 1] + running[b + 1]) / 2.0
                running[b] = torch.where(empty[b], fill, running[b])

    # ----------------------------------------------------------------------------------------
    # smoothing the features

    def _calibration_tables(self):
        """Per-bucket (scale, shift) [n + 1, D], float32, so that smoothed x = x * scale + shift.

        scale = sqrt(clamp(v2 / v1, lo, hi)) and shift = m2 - m1 * scale: the published
        calibrate(x) = (x - m1) * scale + m2 rearranged (equal up to float32 rounding). Dimensions
        (or whole buckets) that the rules leave unchanged get scale 1, shift 0, which maps x to
        exactly x; row n is such an identity row for ignored labels. The tables change only when
        the statistics do, so they are cached, keyed on the four tensors and their in-place version
        counters (every in-place update, load or device move invalidates them).
        """
        stats = (self.running_mean_last_epoch, self.running_var_last_epoch,
                 self.smoothed_mean_last_epoch, self.smoothed_var_last_epoch)
        try:
            versions = tuple(t._version for t in stats)
        except RuntimeError:  # inference-mode tensors keep no version counter: do not cache
            versions = None
        cached = self._tables_cache
        if (versions is not None and cached is not None and cached[1] == versions
                and all(a is b for a, b in zip(cached[0], stats))):
            return cached[2]

        m1, v1, m2, v2 = (t.float() for t in stats)
        if self.label_kind == "age":
            valid = v1 != 0
        else:
            valid = (v1 > 0) & (v2 >= 0)
        # A bucket whose variances sum below 1e-10 is left unchanged as a whole.
        valid = valid & ~(v1.sum(dim=1, keepdim=True) < 1e-10)
        ratio = (v2 / torch.where(valid, v1, 1.0)).clamp_(self.clip_min, self.clip_max)
        scale = torch.where(valid, ratio.sqrt_(), 1.0)
        shift = torch.where(valid, torch.addcmul(m2, m1, scale, value=-1), 0.0)
        # Row n: identity for ignored labels.
        scale = torch.cat([scale, torch.ones_like(scale[:1])])
        shift = torch.cat([shift, torch.zeros_like(shift[:1])])
        tables = (scale, shift)
        # Strong references to the tensors in the key, so their ids cannot be reused meanwhile.
        self._tables_cache = None if versions is None else (stats, versions, tables)
        return tables

    def smooth(self, features: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        """Re-calibrate each sample's features from its bucket's statistics, IN PLACE.

        features: [B, feature_dim] (written in place and returned; must not be a leaf tensor that
        requires grad; gradients flow to whatever produced it, scaled per dimension); labels: [B]
        or [B, 1]. Identity (features returned untouched) when ``epoch < start_smooth``. Sample i in
        bucket b: x <- (x - m1) * sqrt(clamp(v2 / v1, lo, hi)) + m2 (computed as x * scale + shift
        from cached per-bucket tables, see ``_calibration_tables``), with m1/v1 =
        running_*_last_epoch[b] and m2/v2 = smoothed_*_last_epoch[b]; clamp [0.1, 10] (age) or
        [0.5, 2] (STS-B). Unchanged: samples with ignored labels, buckets with sum(v1) < 1e-10,
        dimensions with v1 == 0 (age) or v1 <= 0 or v2 < 0 (STS-B). No host-device sync.
        """
        if epoch < self.start_smooth:
            return features
        self._check_batch(features, labels)
        buckets = self.bucket_of(labels.to(features.device))
        rows = torch.where(buckets < 0, torch.full_like(buckets, self.num_buckets), buckets)
        scale, shift = (t.to(features.device).index_select(0, rows) for t in self._calibration_tables())
        smoothed = torch.addcmul(shift, features.float(), scale)
        # In place, as published: the caller's tensor (which the model also returns) now holds the
        # smoothed features. Autograd records the copy, so gradients reach the backbone through it.
        features.copy_(smoothed)
        return features

