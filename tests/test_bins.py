"""ranksim.bins.Binning: the presets equal the published rules; any labels get weights, FDS buckets
and shot groups; bad bins and labels are refused naming the value."""
import numpy as np
import pytest
import torch

from ranksim import FDS
from ranksim.bins import Binning
from ranksim.metrics import age_shot_groups, shot_groups
from ranksim.weighting import bin_counts, label_weights, stsb_bin_edges


def test_age_preset_is_int_label_clipped_to_0_120():
    labels = np.array([-3.5, -0.2, 0.0, 0.99, 1.0, 42.7, 119.999, 120.0, 120.5, 121.0, 300.0])
    expected = [min(max(int(v), 0), 120) for v in labels]  # Python's int() truncates
    binning = Binning.age()
    assert binning.num_bins == 121
    assert binning.bin_of(labels).tolist() == expected
    assert binning.bin_of_tensor(torch.from_numpy(labels)).tolist() == expected


def test_stsb_preset_is_np_histogram_in_float32():
    binning = Binning.stsb()
    assert binning.edges.dtype == np.float32 and np.array_equal(binning.edges, stsb_bin_edges())
    scores = np.round(np.arange(0, 5.0001, 0.04), 2).astype(np.float32)  # on and between the edges
    # np.histogram of each score alone (float32 data, float32 edges) says which bin it is in.
    expected = [int(np.argmax(np.histogram(np.array([s], np.float32), bins=50, range=(0.0, 5.0))[0]))
                for s in scores]
    assert binning.bin_of(scores).tolist() == expected
    assert binning.bin_of_tensor(torch.from_numpy(scores)).tolist() == expected
    assert binning.bin_of([5.0]).tolist() == [49]


def test_uniform_bins_for_negative_labels_count_like_np_histogram():
    rng = np.random.default_rng(0)
    labels = rng.uniform(-2, 16, size=500)
    labels[:3] = [-2.0, 16.0, 7.0]  # both ends are in the range
    binning = Binning.uniform(-2, 16, bin_width=0.5)
    assert binning.num_bins == 36
    reference, _ = np.histogram(labels, bins=36, range=(-2, 16))
    assert bin_counts(labels, binning=binning).tolist() == reference.tolist()
    dollars = Binning.uniform(0, 1e6, num_bins=100)
    assert dollars.bin_of([0, 9_999.99, 10_000, 1e6]).tolist() == [0, 0, 1, 99]
    uneven = Binning.uniform(0, 1, bin_width=0.3)  # the last bin is cut at the range's end
    assert uneven.edges.tolist() == pytest.approx([0, 0.3, 0.6, 0.9, 1.0])


@pytest.mark.parametrize("make, message", [
    (lambda: Binning.uniform(3, 3, num_bins=4), r"range \[3, 3\]: needs finite low < high"),
    (lambda: Binning.uniform(0, 1), "exactly one of num_bins and bin_width"),
    (lambda: Binning.uniform(0, 1, bin_width=-0.5), "bin_width=-0.5"),
    (lambda: Binning.uniform(0, 1, num_bins=0), "num_bins=0"),
    (lambda: Binning([0, 1, 1, 2]), r"edge 2 \(1.0\) is not above edge 1 \(1.0\)"),
    (lambda: Binning([4]), "at least 2 bin edges"),
    (lambda: Binning([0, float("nan")]), "edges: must be finite"),
    (lambda: Binning([0, 1], out_of_range="drop"), "out_of_range='drop'"),
])
def test_bad_bins_are_refused_naming_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_labels_outside_or_not_finite_are_refused_naming_the_value():
    binning = Binning.uniform(-2, 16, bin_width=1)
    with pytest.raises(ValueError, match=r"labels: labels must lie in \[-2, 16\].*found 17.5 \(2 value\(s\)"):
        binning.bin_of([0.0, 17.5, -3.0])
    with pytest.raises(ValueError, match="found nan"):
        binning.bin_of([0.0, float("nan")])
    with pytest.raises(ValueError, match=r"train_labels: labels must lie in \[-2, 16\].*found 20"):
        shot_groups([20.0], [1.0], binning)
    clipped = Binning.uniform(-2, 16, bin_width=1, out_of_range="clip")
    assert clipped.bin_of([-5.0, 17.5]).tolist() == [0, 17]
    # The tensor form never raises (no host sync): refused labels are -1.
    assert binning.bin_of_tensor(torch.tensor([-3.0, 0.0, float("nan"), 16.0])).tolist() == [-1, 2, -1, 17]


def test_label_weights_with_a_binning_are_inverse_bin_counts():
    labels = np.array([-1.9, -1.2, -1.1, 0.3, 0.4, 0.45, 15.9])
    binning = Binning.uniform(-2, 16, bin_width=1)
    counts = {}
    for b in (int(np.floor(v + 2)) for v in labels):
        counts[b] = counts.get(b, 0) + 1
    raw = np.array([1 / counts[int(np.floor(v + 2))] for v in labels])
    expected = raw * len(labels) / raw.sum()
    got = label_weights(labels, reweight="inverse", label_kind="stsb", binning=binning)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    sqrt = label_weights(labels, reweight="sqrt_inv", binning=binning)
    expected_sqrt = np.sqrt(raw) * len(labels) / np.sqrt(raw).sum()
    np.testing.assert_allclose(sqrt, expected_sqrt, rtol=1e-6)
    with pytest.raises(ValueError, match="found 30"):
        label_weights([30.0], reweight="inverse", binning=binning)


def test_fds_buckets_follow_a_binning():
    binning = Binning.uniform(-2, 16, bin_width=2)
    fds = FDS(4, binning=binning, ks=3, start_update=0)
    assert fds.num_buckets == 9 and fds.running_mean.shape == (9, 4)
    labels = torch.tensor([-2.0, -0.5, 0.0, 15.0, 16.0, 20.0, float("nan")])
    assert fds.bucket_of(labels).tolist() == [0, 0, 1, 8, 8, -1, -1]
    features = torch.arange(28.0).reshape(7, 4)
    fds.update_running_stats(features, labels, epoch=0)
    assert torch.equal(fds.running_mean[0], features[:2].mean(0))  # bucket 0: labels -2 and -0.5
    assert torch.equal(fds.running_mean[8], features[3:5].mean(0))
    with pytest.raises(ValueError, match="a binning defines the buckets"):
        FDS(4, bucket_num=10, binning=binning)


def test_fds_presets_unchanged():
    # The age and STS-B buckets come from Binning presets internally; spot-check the published rules.
    age = FDS(4, bucket_num=100, bucket_start=3)
    assert age.bucket_of(torch.tensor([0.0, 3.0, 3.9, 50.5, 99.0, 140.0])).tolist() == [0, 0, 0, 47, 96, 96]
    stsb = FDS(4, bucket_num=50, bucket_start=0, label_kind="stsb", ks=5)
    assert stsb.bucket_of(torch.tensor([0.0, 0.3, 4.99, 5.0, 5.1])).tolist() == [0, 3, 49, 49, -1]


def test_shot_groups_from_a_binning():
    train = [0.1] * 101 + [2.5] * 30 + [9.0] * 5
    test = [0.2, 2.9, 9.5, 14.0]  # bins 0 (101 train: many), 1 (30: medium), 4 (5: few), 7 (0: few)
    groups = shot_groups(train, test, Binning.uniform(0, 16, bin_width=2))
    assert groups["many"].tolist() == [True, False, False, False]
    assert groups["medium"].tolist() == [False, True, False, False]
    assert groups["few"].tolist() == [False, False, True, True]
    # Integer bins of width 1 reproduce the age rule on ages inside the range.
    rng = np.random.default_rng(1)
    train_ages, test_ages = rng.integers(0, 100, 3000).astype(float), rng.integers(0, 100, 300).astype(float)
    by_binning = shot_groups(train_ages, test_ages, Binning.age())
    by_age = age_shot_groups(train_ages, test_ages)
    assert all(np.array_equal(by_binning[g], by_age[g]) for g in ("many", "medium", "few"))
