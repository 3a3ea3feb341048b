"""FDS against a plain per-label / per-bucket loop written here from docs/published_behaviour.md §3, SciPy and hand cases."""
import io
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d, gaussian_filter1d

import ranksim.fds as fds_module
from ranksim.fds import FDS
from ranksim.weighting import stsb_bin_of

BUFFERS = ["epoch", "running_mean", "running_var", "running_mean_last_epoch", "running_var_last_epoch",
           "smoothed_mean_last_epoch", "smoothed_var_last_epoch", "num_samples_tracked"]


def gaussian_window(ks, sigma):
    impulse = np.zeros(ks)
    impulse[ks // 2] = 1.0
    window = gaussian_filter1d(impulse, sigma)
    return window / window.sum()


class LoopFDS:
    """The docs/published_behaviour.md §3 rules as plain loops (one label / bucket at a time), torch.mean / torch.var."""

    def __init__(self, dim, bucket_num, bucket_start, start_update, start_smooth, window, momentum, kind):
        n = bucket_num - bucket_start
        self.bucket_num, self.bucket_start, self.n = bucket_num, bucket_start, n
        self.start_update, self.start_smooth, self.momentum, self.kind = start_update, start_smooth, momentum, kind
        self.window = window
        self.epoch = start_update
        self.rm, self.rv = torch.zeros(n, dim), torch.ones(n, dim)
        self.rm_last, self.rv_last = torch.zeros(n, dim), torch.ones(n, dim)
        self.sm, self.sv = torch.zeros(n, dim), torch.ones(n, dim)
        self.tracked = torch.zeros(n)

    def bucket(self, label):
        label = float(label)
        if math.isnan(label):
            return None
        if self.kind == "age":
            if label <= self.bucket_start:
                return 0
            if label >= self.bucket_num - 1:
                return self.n - 1
            return math.floor(label) - self.bucket_start
        counts, _ = np.histogram(np.array([label], dtype=np.float32), bins=self.bucket_num, range=(0.0, 5.0))
        if counts.sum() == 0:
            return None
        return max(int(np.argmax(counts)), self.bucket_start) - self.bucket_start

    def update_last_epoch_stats(self, epoch):
        if epoch != self.epoch + 1:
            return
        self.epoch += 1
        self.rm_last, self.rv_last = self.rm, self.rv  # the same tensors, as published
        # torch 'reflect' padding (edge not repeated) is SciPy's 'mirror'; conv1d is a correlation.
        self.sm = torch.from_numpy(correlate1d(self.rm_last.double().numpy(), self.window, axis=0,
                                               mode="mirror")).float()
        self.sv = torch.from_numpy(correlate1d(self.rv_last.double().numpy(), self.window, axis=0,
                                               mode="mirror")).float()

    def update_running_stats(self, features, labels, epoch):
        if epoch < self.epoch:
            return
        buckets = [self.bucket(lab) for lab in labels.reshape(-1).tolist()]
        present = sorted({b for b in buckets if b is not None})
        for b in present:
            rows = [i for i, bi in enumerate(buckets) if bi == b]
            feats = features[rows]
            mean = torch.mean(feats, 0)
            var = torch.var(feats, 0, unbiased=len(rows) > 1)
            self.tracked[b] += len(rows)
            factor = 0.0 if epoch == self.start_update else self.momentum
            self.rm[b] = (1 - factor) * mean + factor * self.rm[b]
            self.rv[b] = (1 - factor) * var + factor * self.rv[b]
        if self.kind == "stsb":
            for b in range(self.n):  # ascending, each bucket seeing the values written before it
                if b in present:
                    continue
                for stat in (self.rm, self.rv):
                    if b == 0:
                        stat[0] = stat[1]
                    elif b == self.n - 1:
                        stat[b] = stat[b - 1]
                    else:
                        stat[b] = (stat[b - 1] + stat[b + 1]) / 2

    def smooth(self, features, labels, epoch):
        out = features.detach().clone()
        if epoch < self.start_smooth:
            return out
        lo, hi = (0.1, 10.0) if self.kind == "age" else (0.5, 2.0)
        for i, lab in enumerate(labels.reshape(-1).tolist()):
            b = self.bucket(lab)
            if b is None:
                continue
            m1, v1, m2, v2 = self.rm_last[b], self.rv_last[b], self.sm[b], self.sv[b]
            if torch.sum(v1) < 1e-10:
                continue
            valid = (v1 != 0) if self.kind == "age" else (v1 > 0) & (v2 >= 0)
            factor = torch.clamp(v2[valid] / v1[valid], lo, hi)
            out[i, valid] = (out[i, valid] - m1[valid]) * torch.sqrt(factor) + m2[valid]
        return out


def make_pair(dim=5, bucket_num=12, bucket_start=3, start_update=0, start_smooth=1, ks=5, sigma=2.0,
              momentum=0.9, kind="age"):
    fds = FDS(dim, bucket_num=bucket_num, bucket_start=bucket_start, start_update=start_update,
              start_smooth=start_smooth, ks=ks, sigma=sigma, momentum=momentum, label_kind=kind)
    ref = LoopFDS(dim, bucket_num, bucket_start, start_update, start_smooth, gaussian_window(ks, sigma),
                  momentum, kind)
    return fds, ref


def assert_same_state(fds, ref):
    torch.testing.assert_close(fds.epoch, torch.tensor([float(ref.epoch)]))
    for name, want in [("running_mean", ref.rm), ("running_var", ref.rv),
                       ("running_mean_last_epoch", ref.rm_last), ("running_var_last_epoch", ref.rv_last),
                       ("smoothed_mean_last_epoch", ref.sm), ("smoothed_var_last_epoch", ref.sv),
                       ("num_samples_tracked", ref.tracked)]:
        torch.testing.assert_close(getattr(fds, name), want, msg=lambda m, name=name: f"{name}: {m}")


def age_batch(gen, n, dim, low, high):
    """Integer labels in [low, high] with features whose mean and spread depend on the label."""
    labels = torch.randint(low, high + 1, (n,), generator=gen).float()
    features = labels[:, None] * 0.3 + (1 + labels[:, None] / 10) * torch.randn(n, dim, generator=gen)
    return features, labels


# ---------------------------------------------------------------------------------------------
# buffers, construction errors


def test_buffers_names_shapes_and_initial_values():
    fds = FDS(7, bucket_num=100, bucket_start=3, start_update=2)
    sd = fds.state_dict()
    assert list(sd) == BUFFERS  # nothing else (kernel window, STS-B edges) goes into checkpoints
    assert sd["epoch"].tolist() == [2.0]
    for name in BUFFERS[1:-1]:
        assert sd[name].shape == (97, 7)
        assert torch.all(sd[name] == (1.0 if "var" in name else 0.0))
    assert sd["num_samples_tracked"].shape == (97,) and not sd["num_samples_tracked"].any()
    assert FDS(3, bucket_num=50, bucket_start=0, label_kind="stsb").running_mean.shape == (50, 3)


@pytest.mark.parametrize("kwargs, name", [
    (dict(ks=4), "ks"), (dict(ks=0), "ks"), (dict(kernel="box"), "kernel"), (dict(label_kind="score"), "label_kind"),
    (dict(bucket_num=3, bucket_start=3), "bucket_num"), (dict(momentum=1.5), "momentum"),
    (dict(sigma=0), "sigma"), (dict(bucket_num=6, bucket_start=3, ks=7), "ks"), (dict(bucket_start=-1), "bucket_start"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        FDS(4, **kwargs)


def test_bad_batch_shapes_raise_value_error():
    fds = FDS(4, bucket_num=12, bucket_start=3)
    with pytest.raises(ValueError, match="^features: expected shape"):
        fds.update_running_stats(torch.zeros(5, 3), torch.zeros(5), 0)
    with pytest.raises(ValueError, match="^labels: expected 5 labels"):
        fds.update_running_stats(torch.zeros(5, 4), torch.zeros(6), 0)
    with pytest.raises(ValueError, match="^features: expected shape"):
        fds.smooth(torch.zeros(5, 2), torch.zeros(5), 1)


# ---------------------------------------------------------------------------------------------
# buckets


@pytest.mark.parametrize("bucket_start", [3, 0])
def test_age_buckets_merge_both_ends(bucket_start):
    fds, ref = make_pair(bucket_num=100, bucket_start=bucket_start)
    labels = torch.tensor([0, 1, 2, 3, 4, 10.0, 10.7, 50, 97, 98, 98.5, 99, 100, 120, 186, -1, float("nan")])
    got = fds.bucket_of(labels)
    assert got.dtype == torch.int64
    want = [ref.bucket(v) for v in labels.tolist()]
    assert got.tolist() == [-1 if w is None else w for w in want]
    # Hand-written: labels up to bucket_start in row 0, from 99 up in the last row (96 or 99).
    last = 99 - bucket_start
    hand = {0: 0, 3: 3 - bucket_start, 4: 4 - bucket_start, 98: 98 - bucket_start, 99: last, 120: last}
    for label, row in hand.items():
        assert fds.bucket_of(torch.tensor([label])).item() == row
    assert fds.bucket_of(torch.tensor([[5], [6]])).tolist() == [5 - bucket_start, 6 - bucket_start]


def test_stsb_buckets_are_float32_histogram_bins():
    fds = FDS(3, bucket_num=50, bucket_start=0, label_kind="stsb")
    grid = np.concatenate([np.arange(0, 501) / 100, np.arange(0, 16) / 3, np.arange(0, 26) / 5, np.arange(0, 21) / 4,
                           np.random.default_rng(0).uniform(0, 5, 300), [5.0, -0.01, 5.01, np.nan]])
    labels32 = grid.astype(np.float32)
    want = []
    for value in labels32:
        counts, _ = np.histogram(np.array([value], dtype=np.float32), bins=50, range=(0.0, 5.0))
        want.append(int(np.argmax(counts)) if counts.sum() else -1)
    assert fds.bucket_of(torch.from_numpy(labels32)).tolist() == want
    # float64 labels are binned as their float32 value (what the training targets are)
    assert fds.bucket_of(torch.from_numpy(grid)).tolist() == want
    in_range = labels32[(labels32 >= 0) & (labels32 <= 5)]
    assert fds.bucket_of(torch.from_numpy(in_range)).tolist() == stsb_bin_of(in_range).tolist()  # = LDS bins
    hand = {0.0: 0, 0.09: 0, 0.1: 1, 0.6: 6, 3.8: 38, 4.8: 48, 4.99: 49, 5.0: 49}
    assert fds.bucket_of(torch.tensor(list(hand))).tolist() == list(hand.values())
    floored = FDS(3, bucket_num=50, bucket_start=5, label_kind="stsb")
    assert floored.bucket_of(torch.tensor([0.0, 0.45, 0.5, 0.61, 5.0])).tolist() == [0, 0, 0, 1, 44]


# ---------------------------------------------------------------------------------------------
# update_running_stats, update_last_epoch_stats


@pytest.mark.parametrize("bucket_start, chunk_elements", [(3, 1 << 19), (0, 1 << 19), (3, 20)])
def test_update_running_stats_matches_loop(bucket_start, chunk_elements, monkeypatch):
    monkeypatch.setattr(fds_module, "CHUNK_ELEMENTS", chunk_elements)  # 20: 3 samples per chunk
    gen = torch.Generator().manual_seed(1)
    fds, ref = make_pair(dim=6, bucket_num=14, bucket_start=bucket_start)
    feats, labels = age_batch(gen, 80, 6, 0, 18)  # below bucket_start and above bucket_num - 1 too
    feats = torch.cat([feats, torch.randn(1, 6, generator=gen)])
    labels = torch.cat([labels, torch.tensor([7.0])])
    labels[labels == 7] = 20.0
    labels[-1] = 7.0  # bucket 7 holds exactly one sample: biased variance 0
    for fx in (fds, ref):
        fx.update_running_stats(feats, labels, 0)  # first update: factor 0
    assert_same_state(fds, ref)
    assert torch.all(fds.running_var[7 - bucket_start] == 0)
    assert not torch.equal(fds.running_mean, fds.running_mean_last_epoch)  # no alias yet at start_update

    feats2, labels2 = age_batch(gen, 40, 6, 5, 9)  # only buckets 5..9: the others keep their values
    for fx in (fds, ref):
        fx.update_last_epoch_stats(1)
        fx.update_running_stats(feats2, labels2, 1)  # momentum 0.9
    assert_same_state(fds, ref)
    before = {k: v.clone() for k, v in fds.state_dict().items()}
    fds.update_running_stats(feats, labels, 0)  # epoch 0 < self.epoch 1: skipped
    for key, value in fds.state_dict().items():
        assert torch.equal(value, before[key])


def test_update_running_stats_is_numerically_stable_for_large_offsets():
    gen = torch.Generator().manual_seed(2)
    fds = FDS(4, bucket_num=12, bucket_start=3)
    feats = 1e4 + 1e-2 * torch.randn(200, 4, generator=gen)
    labels = torch.full((200,), 5.0)
    fds.update_running_stats(feats, labels, 0)
    want = feats.double().var(0)
    torch.testing.assert_close(fds.running_var[2].double(), want, rtol=1e-3, atol=0)


def test_momentum_formula_by_hand():
    fds = FDS(2, bucket_num=6, bucket_start=0, ks=3, momentum=0.75)
    feats = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    labels = torch.tensor([2.0, 2.0])
    fds.update_running_stats(feats, labels, 0)
    assert fds.running_mean[2].tolist() == [2.0, 4.0] and fds.running_var[2].tolist() == [2.0, 8.0]
    fds.update_running_stats(torch.tensor([[5.0, 0.0]]), torch.tensor([2.0]), 1)
    torch.testing.assert_close(fds.running_mean[2], torch.tensor([0.25 * 5 + 0.75 * 2, 0.75 * 4]))
    torch.testing.assert_close(fds.running_var[2], torch.tensor([0.75 * 2, 0.75 * 8]))
    assert fds.num_samples_tracked.tolist() == [0, 0, 3, 0, 0, 0]


def test_update_last_epoch_stats_reflect_padding_and_epoch_rule():
    fds = FDS(3, bucket_num=9, bucket_start=2, ks=5, sigma=1.5, kernel="gaussian")
    gen = torch.Generator().manual_seed(3)
    fds.running_mean.copy_(torch.randn(7, 3, generator=gen))
    fds.running_var.copy_(torch.rand(7, 3, generator=gen))
    assert fds.update_last_epoch_stats(0) is False and fds.epoch.item() == 0  # needs self.epoch + 1
    assert fds.update_last_epoch_stats(2) is False
    assert fds.update_last_epoch_stats(1) is True and fds.epoch.item() == 1
    window = gaussian_window(5, 1.5)
    for name in ("mean", "var"):
        src = getattr(fds, f"running_{name}").double().numpy()
        want = correlate1d(src, window, axis=0, mode="mirror")
        torch.testing.assert_close(getattr(fds, f"smoothed_{name}_last_epoch").double(),
                                   torch.from_numpy(want), rtol=1e-6, atol=1e-6)
    # By hand at the first bucket: padded column is r2 r1 | r0 r1 r2 ... (edge not repeated).
    r = fds.running_mean[:, 0].double()
    w = window
    first = w[0] * r[2] + w[1] * r[1] + w[2] * r[0] + w[3] * r[1] + w[4] * r[2]
    assert abs(fds.smoothed_mean_last_epoch[0, 0].item() - first.item()) < 1e-6


def test_laplace_window_smoothing_by_hand():
    fds = FDS(1, bucket_num=4, bucket_start=0, ks=3, sigma=2.0, kernel="laplace")
    fds.running_mean[:, 0] = torch.tensor([1.0, 2.0, 4.0, 8.0])
    fds.update_last_epoch_stats(1)
    w = np.exp(-np.abs([-1.0, 0.0, 1.0]) / 2.0)
    w = w / w.sum()
    want = [w[0] * 2 + w[1] * 1 + w[2] * 2, w[0] * 1 + w[1] * 2 + w[2] * 4,
            w[0] * 2 + w[1] * 4 + w[2] * 8, w[0] * 4 + w[1] * 8 + w[2] * 4]
    np.testing.assert_allclose(fds.smoothed_mean_last_epoch[:, 0].numpy(), want, rtol=1e-6)


def test_last_epoch_stats_alias_the_running_stats():
    gen = torch.Generator().manual_seed(4)
    fds = FDS(4, bucket_num=12, bucket_start=3)
    feats, labels = age_batch(gen, 60, 4, 0, 14)
    fds.update_running_stats(feats, labels, 0)
    fds.update_last_epoch_stats(1)
    assert fds.running_mean_last_epoch is fds.running_mean and fds.running_var_last_epoch is fds.running_var
    smoothed = fds.smoothed_mean_last_epoch.clone()
    feats2, labels2 = age_batch(gen, 60, 4, 0, 14)
    fds.update_running_stats(feats2 + 5, labels2, 1)
    assert torch.equal(fds.running_mean_last_epoch, fds.running_mean)  # the update shows through
    assert torch.equal(fds.smoothed_mean_last_epoch, smoothed)  # the smoothed ones stay
    assert list(fds.state_dict()) == BUFFERS  # both names stay in checkpoints


@pytest.mark.parametrize("bucket_start", [3, 0])
def test_training_timeline_matches_loop(bucket_start):
    """The published per-epoch order: smooth during training, then last-epoch stats, then update."""
    gen = torch.Generator().manual_seed(5)
    fds, ref = make_pair(dim=5, bucket_num=12, bucket_start=bucket_start, start_update=0, start_smooth=1)
    for epoch in range(4):
        feats, labels = age_batch(gen, 48, 5, 0, 15)
        torch.testing.assert_close(fds.smooth(feats.clone(), labels, epoch), ref.smooth(feats, labels, epoch))
        all_feats, all_labels = age_batch(gen, 120, 5, 0, 15)
        for fx in (fds, ref):
            fx.update_last_epoch_stats(epoch)
            fx.update_running_stats(all_feats, all_labels, epoch)
        assert_same_state(fds, ref)
    assert fds.running_mean_last_epoch is fds.running_mean


def test_stsb_empty_buckets_copy_neighbours_in_order():
    gen = torch.Generator().manual_seed(6)
    fds, ref = make_pair(dim=4, bucket_num=50, bucket_start=0, kind="stsb")
    # Bins 0, 1 (first two), 10 (isolated), 20-22 (a run), 48, 49 (last two) get no sample.
    present = [b for b in range(50) if b not in (0, 1, 10, 20, 21, 22, 48, 49)]
    labels = torch.tensor([b / 10 + 0.05 for b in present for _ in range(3)])
    feats = labels[:, None] + torch.randn(len(labels), 4, generator=gen)
    for epoch in range(3):
        for fx in (fds, ref):
            fx.update_last_epoch_stats(epoch)
            fx.update_running_stats(feats * (epoch + 1), labels, epoch)
        assert_same_state(fds, ref)
    # Sequential reading, by hand: bin 20 = mean(19, old 21); bin 21 = mean(new 20, old 22).
    fds2 = FDS(1, bucket_num=50, bucket_start=0, label_kind="stsb")
    fds2.running_mean[:, 0] = torch.arange(50.0) * 10
    lone = [b for b in range(50) if b not in (20, 21)]
    fds2.update_running_stats(torch.tensor([[b * 10.0] for b in lone]), torch.tensor([b / 10 + 0.05 for b in lone]), 0)
    assert fds2.running_mean[20, 0].item() == (190 + 210) / 2
    assert fds2.running_mean[21, 0].item() == (200 + 220) / 2
    # variances: single samples give 0, bin 21 still held its initial 1 when bin 20 was filled
    assert fds2.running_var[20, 0].item() == (0 + 1) / 2
    assert fds2.running_var[21, 0].item() == (0.5 + 0) / 2


# ---------------------------------------------------------------------------------------------
# smooth


def crafted(fds, ref, gen, kind):
    """Statistics that exercise every rule: clamps at both ends, v1 == 0 / v1 <= 0 / v2 < 0 dims,
    a bucket with sum(v1) < 1e-10. Written into both implementations (aliased, as after a boundary)."""
    n, dim = fds.num_buckets, fds.feature_dim
    rm, rv = torch.randn(n, dim, generator=gen), 0.5 + torch.rand(n, dim, generator=gen)
    sm, sv = torch.randn(n, dim, generator=gen), 0.5 + torch.rand(n, dim, generator=gen)
    sv[1, 0], sv[1, 1] = 100 * rv[1, 0], 1e-3 * rv[1, 1]  # ratio far above / below both clamps
    sv[2, 0], sv[2, 1] = 1.5 * rv[2, 0], 0.7 * rv[2, 1]  # inside the STS-B clamp
    rv[3, :2] = 0.0  # v1 == 0 dims
    rv[4] = 1e-12  # sum(v1) < 1e-10: the whole bucket unchanged
    if kind == "stsb":
        rv[5, 0] = -0.5  # v1 <= 0
        sv[5, 1] = -0.25  # v2 < 0
    for fx_m, fx_v in ((fds.running_mean, fds.running_var), (ref.rm, ref.rv)):
        fx_m.copy_(rm)
        fx_v.copy_(rv)
    fds.smoothed_mean_last_epoch.copy_(sm)
    fds.smoothed_var_last_epoch.copy_(sv)
    ref.sm, ref.sv = sm.clone(), sv.clone()
    fds.running_mean_last_epoch = fds.running_mean
    fds.running_var_last_epoch = fds.running_var
    ref.rm_last, ref.rv_last = ref.rm, ref.rv


@pytest.mark.parametrize("bucket_start", [3, 0])
def test_age_smooth_matches_loop_and_is_in_place(bucket_start):
    gen = torch.Generator().manual_seed(7)
    fds, ref = make_pair(dim=6, bucket_num=12, bucket_start=bucket_start)
    crafted(fds, ref, gen, "age")
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 30, float("nan"), 3 + bucket_start,
                           4 + bucket_start, 5 + bucket_start, 1 + bucket_start])
    feats = torch.randn(len(labels), 6, generator=gen)
    want = ref.smooth(feats, labels, 1)
    x = feats.clone()
    out = fds.smooth(x, labels[:, None], 1)
    assert out is x
    torch.testing.assert_close(x, want)
    assert torch.equal(x[14], feats[14])  # NaN label: ignored
    row = labels.tolist().index(3 + bucket_start)
    assert torch.equal(x[row, :2], feats[row, :2]) and not torch.equal(x[row, 2:], feats[row, 2:])
    row = labels.tolist().index(4 + bucket_start)
    assert torch.equal(x[row], feats[row])
    # the clamps, by hand: factor 10 and 0.1
    row = labels.tolist().index(1 + bucket_start)
    m1, m2 = fds.running_mean[1], fds.smoothed_mean_last_epoch[1]
    torch.testing.assert_close(x[row, 0], (feats[row, 0] - m1[0]) * math.sqrt(10) + m2[0])
    torch.testing.assert_close(x[row, 1], (feats[row, 1] - m1[1]) * math.sqrt(0.1) + m2[1])


def test_stsb_smooth_matches_loop_with_its_rules():
    gen = torch.Generator().manual_seed(8)
    fds, ref = make_pair(dim=6, bucket_num=50, bucket_start=0, kind="stsb")
    crafted(fds, ref, gen, "stsb")
    labels = torch.tensor([0.0, 0.12, 0.15, 0.2, 0.3, 0.35, 0.4, 0.5, 0.55, 2.6, 5.0, 5.5, -1.0])
    feats = torch.randn(len(labels), 6, generator=gen)
    want = ref.smooth(feats, labels, 3)
    x = feats.clone()
    assert fds.smooth(x, labels, 3) is x
    torch.testing.assert_close(x, want)
    m1, m2 = fds.running_mean[1], fds.smoothed_mean_last_epoch[1]
    torch.testing.assert_close(x[1, 0], (feats[1, 0] - m1[0]) * math.sqrt(2.0) + m2[0])  # clamp 2
    torch.testing.assert_close(x[1, 1], (feats[1, 1] - m1[1]) * math.sqrt(0.5) + m2[1])  # clamp 0.5
    assert torch.equal(x[8, :2], feats[8, :2]) and not torch.equal(x[8, 2:], feats[8, 2:])  # v1<=0, v2<0
    assert torch.equal(x[11], feats[11]) and torch.equal(x[12], feats[12])  # outside [0, 5]


def test_smooth_follows_every_change_of_the_statistics():
    """smooth caches per-bucket tables: in-place edits, updates and loads must all show."""
    gen = torch.Generator().manual_seed(14)
    fds, ref = make_pair(dim=5, bucket_num=12, bucket_start=3)
    crafted(fds, ref, gen, "age")
    labels = torch.arange(12.0)
    feats = torch.randn(12, 5, generator=gen)

    def check():
        torch.testing.assert_close(fds.smooth(feats.clone(), labels, 1), ref.smooth(feats, labels, 1))

    check()
    fds.smoothed_mean_last_epoch += 1.0  # in place, by hand
    ref.sm += 1.0
    check()
    fds.smoothed_var_last_epoch[5] = 3.0
    ref.sv[5] = 3.0
    check()
    more, more_labels = age_batch(gen, 30, 5, 0, 14)
    for fx in (fds, ref):
        fx.update_running_stats(more, more_labels, 1)  # shows through the alias
    check()
    other, other_ref = make_pair(dim=5, bucket_num=12, bucket_start=3)
    crafted(other, other_ref, gen, "age")
    fds.load_state_dict(other.state_dict())
    torch.testing.assert_close(fds.smooth(feats.clone(), labels, 1), other_ref.smooth(feats, labels, 1))


def test_smooth_is_identity_before_start_smooth():
    fds = FDS(4, bucket_num=12, bucket_start=3, start_smooth=2)
    fds.running_mean_last_epoch.fill_(3.0)  # would change the features if smoothing applied
    x = torch.randn(10, 4)
    before = x.clone()
    assert fds.smooth(x, torch.arange(10.0), 1) is x
    assert torch.equal(x, before)
    fds.smooth(x, torch.arange(10.0), 2)
    assert not torch.equal(x, before)


def test_smooth_backward_reaches_the_backbone():
    gen = torch.Generator().manual_seed(9)
    fds, ref = make_pair(dim=6, bucket_num=12, bucket_start=3)
    crafted(fds, ref, gen, "age")
    backbone = torch.nn.Linear(3, 6)
    inputs = torch.randn(16, 3, generator=gen)
    labels = torch.randint(0, 12, (16,), generator=gen).float()
    weights = torch.randn(16, 6, generator=gen)

    encoding = backbone(inputs)
    (fds.smooth(encoding, labels, 1) * weights).sum().backward()
    got = backbone.weight.grad.clone()

    # Reference: the same map written out of place, per sample, with the loop's statistics.
    backbone.weight.grad = None
    encoding = backbone(inputs)
    rows = []
    for i, lab in enumerate(labels.tolist()):
        b = ref.bucket(lab)
        m1, v1, m2, v2 = ref.rm_last[b], ref.rv_last[b], ref.sm[b], ref.sv[b]
        if torch.sum(v1) < 1e-10:
            rows.append(encoding[i])
            continue
        valid = v1 != 0
        scale = torch.where(valid, torch.sqrt(torch.clamp(v2 / v1, 0.1, 10)), torch.ones_like(v1))
        rows.append(torch.where(valid, (encoding[i] - m1) * scale + m2, encoding[i]))
    (torch.stack(rows) * weights).sum().backward()
    torch.testing.assert_close(got, backbone.weight.grad)
    assert got.abs().sum() > 0


def test_smooth_half_precision_features_in_place():
    gen = torch.Generator().manual_seed(10)
    fds, ref = make_pair(dim=6, bucket_num=12, bucket_start=3)
    crafted(fds, ref, gen, "age")
    labels = torch.arange(12.0)
    feats = torch.randn(12, 6, generator=gen).to(torch.bfloat16)
    x = feats.clone()
    fds.smooth(x, labels, 1)
    assert x.dtype == torch.bfloat16
    torch.testing.assert_close(x, ref.smooth(feats.float(), labels, 1).to(torch.bfloat16))


# ---------------------------------------------------------------------------------------------
# checkpoints and device / dtype moves


def trained(seed=11, epochs=3):
    gen = torch.Generator().manual_seed(seed)
    fds = FDS(4, bucket_num=12, bucket_start=3)
    for epoch in range(epochs):
        feats, labels = age_batch(gen, 80, 4, 0, 14)
        fds.update_last_epoch_stats(epoch)
        fds.update_running_stats(feats, labels, epoch)
    return fds, gen


def test_state_dict_round_trip_restores_values_and_alias():
    fds, gen = trained()
    buf = io.BytesIO()
    torch.save(fds.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert list(loaded) == BUFFERS
    assert {k: tuple(v.shape) for k, v in loaded.items()} == {k: tuple(v.shape) for k, v in fds.state_dict().items()}
    fresh = FDS(4, bucket_num=12, bucket_start=3)
    fresh.load_state_dict(loaded)
    for key, value in fds.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    assert fresh.running_mean_last_epoch is fresh.running_mean  # the saved module was aliased
    # ... so the restored module goes on exactly like the original one
    feats, labels = age_batch(gen, 80, 4, 0, 14)
    for fx in (fds, fresh):
        fx.update_running_stats(feats, labels, 3)
    probe = torch.randn(20, 4, generator=gen)
    plabels = torch.randint(0, 15, (20,), generator=gen).float()
    torch.testing.assert_close(fresh.smooth(probe.clone(), plabels, 4), fds.smooth(probe.clone(), plabels, 4))


def test_load_keeps_separate_values_when_the_checkpoint_was_not_aliased():
    gen = torch.Generator().manual_seed(12)
    # After the first update (epoch == start_update) the module is not aliased and the two differ.
    first = FDS(4, bucket_num=12, bucket_start=3)
    feats, labels = age_batch(gen, 80, 4, 0, 14)
    first.update_last_epoch_stats(0)
    first.update_running_stats(feats, labels, 0)
    sd = {k: v.clone() for k, v in first.state_dict().items()}
    assert not torch.equal(sd["running_mean"], sd["running_mean_last_epoch"])
    target, _ = trained(seed=13)  # currently aliased: loading must not mix the two entries
    target.load_state_dict(sd)
    assert torch.equal(target.running_mean, sd["running_mean"])
    assert torch.equal(target.running_mean_last_epoch, sd["running_mean_last_epoch"])
    assert torch.equal(target.running_var_last_epoch, sd["running_var_last_epoch"])
    assert target.running_mean_last_epoch is not target.running_mean
    # A fresh module's state (epoch == start_update) stays unaliased even though the values agree.
    fresh = FDS(4, bucket_num=12, bucket_start=3)
    fresh.load_state_dict(FDS(4, bucket_num=12, bucket_start=3).state_dict())
    assert fresh.running_mean_last_epoch is not fresh.running_mean


def test_alias_survives_device_and_dtype_moves():
    fds, _ = trained()
    targets = [dict(dtype=torch.float64), dict(device="meta")]
    if torch.cuda.is_available():
        targets.append(dict(device="cuda"))
    for kwargs in targets:
        moved, _ = trained()
        moved.to(**kwargs)
        assert moved.running_mean_last_epoch is moved.running_mean, kwargs
        assert moved.running_var_last_epoch is moved.running_var, kwargs
        assert moved.running_mean.device.type == kwargs.get("device", "cpu")
    unaliased = FDS(4, bucket_num=12, bucket_start=3).double()
    assert unaliased.running_mean_last_epoch is not unaliased.running_mean
    # the module still works after a move (float64 buffers, float32 features)
    fds.double()
    x = torch.randn(5, 4)
    fds.smooth(x, torch.arange(5.0), 5)
    fds.update_running_stats(x, torch.arange(5.0), 5)
    assert fds.running_mean.dtype == torch.float64 and fds.running_mean_last_epoch is fds.running_mean
