"""Fidelity to the published code: the --published_quirks behaviours (both settings pinned) and the
STS-B fixes, each against a reference written here (the published formula or a hand-computed case).

End-to-end wiring lives with the programs' other runs (test_age_train.py, test_stsb_train.py).
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from folder_modules import age_train_one_epoch, load_folder_module
from published_labels import agedb_labels, stsb_labels
from scipy.ndimage import convolve1d, gaussian_filter1d

from ranksim.harness.cli import UserError
from ranksim.harness.distributed import DistContext, GlobalBatch
from ranksim.harness.loop import DivergenceError, StepOptions, exploding_loss_limit
from ranksim.harness.stsb_flags import build_parser as stsb_parser
from ranksim.harness.stsb_flags import resolve_resume_by_name
from ranksim.losses import get_loss, published_age_loss
from ranksim.ranking import rank_normalised
from ranksim.weighting import label_weights

STSB_DIR = Path(__file__).resolve().parents[1] / "sts-b-dir"
stsb_train = load_folder_module("stsb_train_quirks", STSB_DIR / "train.py")


def lds_window(ks, sigma):
    """The LDS window of the published code: a smoothed unit impulse, maximum 1."""
    impulse = np.zeros(ks)
    impulse[ks // 2] = 1.0
    window = gaussian_filter1d(impulse, sigma=sigma)
    return window / window.max()


def smooth_by_hand(values, window, truncate):
    """Plain-loop zero-padded convolution of a per-bin vector; ``truncate``: int() of every sum (what
    convolve1d does to an integer array)."""
    half = len(window) // 2
    out = []
    for b in range(len(values)):
        total = sum(w * values[b + k - half] for k, w in enumerate(window) if 0 <= b + k - half < len(values))
        out.append(float(math.trunc(total)) if truncate else total)
    return out


def weights_from_bin_values(bins, values):
    inverse = [1.0 / values[b] for b in bins]
    scale = len(bins) / sum(inverse)
    return np.array([w * scale for w in inverse])


# --------------------------------------------------------------- (9) INV + LDS: integer smoothing

AGE_LABELS = [10] * 7 + [11] + [12] * 30 + [13] * 2 + [40] * 200 + [41] * 1500 + [60] * 3


def age_inverse_lds_by_hand(labels, truncate, ks=5, sigma=2.0):
    counts = [0] * 121
    for y in labels:
        counts[min(int(y), 120)] += 1
    clipped = [min(max(c, 5), 1000) for c in counts]  # age `inverse`: counts clipped to [5, 1000]
    smoothed = smooth_by_hand(clipped, lds_window(ks, sigma), truncate)
    return weights_from_bin_values([min(int(y), 120) for y in labels], smoothed)


@pytest.mark.parametrize("quirk", [False, True])
def test_age_inverse_lds_smooths_integer_counts_only_under_the_quirk(quirk):
    got = label_weights(np.array(AGE_LABELS, np.float32), "inverse", lds=True, lds_kernel="gaussian", lds_ks=5,
                        lds_sigma=2, label_kind="age", integer_smoothing=quirk)
    np.testing.assert_allclose(got, age_inverse_lds_by_hand(AGE_LABELS, truncate=quirk), rtol=1e-6)


def test_integer_smoothing_truncates_a_hand_computed_bin():
    window = lds_window(5, 2.0)
    # bin 10 sees bins 8..12 with clipped counts 5, 5, 7, 5, 30
    exact = window[0] * 5 + window[1] * 5 + 7 + window[3] * 5 + window[4] * 30
    assert exact != int(exact)
    for quirk, bin10_value in ((False, exact), (True, float(int(exact)))):
        got = label_weights(np.array(AGE_LABELS, np.float32), "inverse", lds=True, lds_ks=5, lds_sigma=2,
                            label_kind="age", integer_smoothing=quirk)
        ratio = got[AGE_LABELS.index(11)] / got[AGE_LABELS.index(10)]  # weight ratio = value ratio
        bin11 = sum(w * c for w, c in zip(window, [5, 7, 5, 30, 5]))  # bin 13 (2 samples) is clipped to 5
        bin11 = float(int(bin11)) if quirk else bin11
        assert ratio == pytest.approx(bin10_value / bin11, rel=1e-6)


def test_integer_smoothing_effect_on_the_published_agedb_labels_as_documented():
    """The README's figure: AgeDB-DIR INV+LDS (gaussian, ks 5, sigma 2) weights move by up to 3.8 %."""
    labels = agedb_labels("train").tolist()
    exact = age_inverse_lds_by_hand(labels, truncate=False)
    truncated = age_inverse_lds_by_hand(labels, truncate=True)
    assert np.max(np.abs(truncated / exact - 1)) == pytest.approx(0.038, abs=5e-4)


def test_integer_smoothing_leaves_sqrt_inv_and_unsmoothed_weights_alone():
    labels = np.array(AGE_LABELS, np.float32)
    for reweight, lds in (("sqrt_inv", True), ("inverse", False)):
        np.testing.assert_array_equal(label_weights(labels, reweight, lds, label_kind="age", integer_smoothing=True),
                                      label_weights(labels, reweight, lds, label_kind="age"))


def stsb_published_weights(scores, num_bins, truncate_via_int_histogram):
    """The published STS-B recipe: np.histogram counts (an int array) over num_bins bins on [0, 5],
    smoothed with convolve1d; the float path smooths the same counts as floats."""
    hist, _ = np.histogram(scores, bins=num_bins, range=(0.0, 5.0))
    values = hist if truncate_via_int_histogram else hist.astype(np.float64)
    smoothed = convolve1d(values, weights=lds_window(5, 2.0), mode="constant")
    bins = [int(s / (5.0 / num_bins)) for s in scores]  # bin centres below: no edge ambiguity
    return weights_from_bin_values(bins, smoothed.astype(np.float64))


def stsb_scores(num_bins):
    rng = np.random.default_rng(0)
    bins = rng.choice(num_bins, size=400, p=np.linspace(1, 8, num_bins) / np.linspace(1, 8, num_bins).sum())
    return ((bins + 0.5) * (5.0 / num_bins)).astype(np.float32)


@pytest.mark.parametrize("quirk", [False, True])
@pytest.mark.parametrize("num_bins", [50, 20])
def test_stsb_inverse_lds_over_bucket_num_bins(quirk, num_bins):
    scores = stsb_scores(num_bins)
    args = stsb_parser().parse_args(["--reweight", "inverse", "--lds", "--bucket_num", str(num_bins)]
                                                + (["--published_quirks"] if quirk else []))
    got = stsb_train.train_weights(args, scores)
    np.testing.assert_allclose(got, stsb_published_weights(scores, num_bins, quirk), rtol=1e-6)
    if quirk:  # the truncation is visible on these data
        assert not np.allclose(got, stsb_published_weights(scores, num_bins, False), rtol=1e-6)


def test_integer_smoothing_effect_on_the_published_stsb_labels_as_documented():
    """The README's figure: STS-B-DIR INV+LDS weights move by up to 0.4 % (50 bins, gaussian 5 / 2)."""
    args = stsb_parser().parse_args(["--reweight", "inverse", "--lds"])
    scores = stsb_labels("train")
    exact = stsb_train.train_weights(args, scores)
    args.published_quirks = True
    assert np.max(np.abs(stsb_train.train_weights(args, scores) / exact - 1)) == pytest.approx(0.0038, abs=1e-4)


# ------------------------------------------------------- (10) age Focal-R / Huber: positional weights

def sample_batch():
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(12, 1, generator=gen) * 3
    target = torch.randn(12, 1, generator=gen) * 3
    weights = torch.rand(12, 1, generator=gen) * 2 + 0.1
    return pred, target, weights


def focal_by_hand(pred, target, square):
    total = 0.0
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
        d = abs(p - t)
        factor = 2 / (1 + math.exp(-0.2 * d)) - 1  # 2 * sigmoid(0.2 |d|) - 1, gamma 1
        total += (d * d if square else d) * factor
    return total / pred.numel()


@pytest.mark.parametrize("name,square", [("focal_l1", False), ("focal_mse", True)])
def test_published_focal_losses_ignore_the_weights(name, square):
    pred, target, weights = sample_batch()
    published = published_age_loss(name)(pred, target, weights)
    assert published.item() == pytest.approx(focal_by_hand(pred, target, square), rel=1e-5)
    ours = get_loss(name)(pred, target, weights)  # the intended method weights every sample
    weighted = sum(w * x for w, x in zip(weights.flatten().tolist(), [
        focal_by_hand(pred[i:i + 1], target[i:i + 1], square) for i in range(12)])) / 12
    assert ours.item() == pytest.approx(weighted, rel=1e-5) and ours.item() != pytest.approx(published.item())


def test_published_huber_uses_each_weight_as_its_threshold():
    pred, target, weights = sample_batch()
    expected = 0.0
    for p, t, beta in zip(pred.flatten().tolist(), target.flatten().tolist(), weights.flatten().tolist()):
        a = abs(p - t)
        expected += 0.5 * a * a / beta if a < beta else a - 0.5 * beta
    expected /= 12
    assert published_age_loss("huber")(pred, target, weights).item() == pytest.approx(expected, rel=1e-5)
    # with every weight 1 (--reweight none) it is the ordinary Huber loss, beta 1
    ones = torch.ones_like(weights)
    assert published_age_loss("huber")(pred, target, ones).item() == pytest.approx(
        get_loss("huber")(pred, target, ones).item(), rel=1e-6)


@pytest.mark.parametrize("name", ["mse", "l1"])
def test_published_mse_and_l1_are_the_weighted_losses(name):
    pred, target, weights = sample_batch()
    assert torch.equal(published_age_loss(name)(pred, target, weights), get_loss(name)(pred, target, weights))


# ------------------------------------------------------------------------ (11) divergence limit

class ConstantModel(torch.nn.Module):
    """pred = w * x, called like the benchmark models: model(inputs, labels, epoch)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, labels=None, epoch=None):
        return (x * self.w, x) if self.training else x * self.w  # train.py's model: (predictions, features)


@pytest.mark.parametrize("quirk,diverges", [(False, False), (True, True)])
def test_loss_of_ten_million_diverges_only_under_the_published_limit(quirk, diverges):
    assert exploding_loss_limit(quirk) == (1e6 if quirk else 1e8)
    model = ConstantModel()
    batch = (torch.zeros(4, 1), torch.full((4, 1), 3000.0), torch.ones(4, 1))  # mse = 9e6
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def run():
        return age_train_one_epoch(model, [batch], optimizer, get_loss("mse"),
                                   flags=["--published_quirks"] if quirk else [])  # agedb-dir/train.py's step
    if diverges:
        with pytest.raises(DivergenceError, match="loss = 9e"):
            run()
    else:
        assert run()[0] == pytest.approx(9e6)


# ------------------------------------------------------------------ (12) non-stable published ranks

def published_rank_normalised(x):
    """The published ranking: the same double argsort, with torch's default (non-stable) sort."""
    return (torch.argsort(torch.argsort(x, dim=1).flip(1), dim=1) + 1).float() / x.shape[1]


@pytest.mark.parametrize("length,same", [(16, True), (17, False)])
def test_published_non_stable_ranks_of_ties_differ_on_cpu_from_length_17(length, same):
    x = torch.zeros(1, length)
    x[0, ::2] = 1.0  # two values, many ties
    # ours: stable, the larger index first among ties (hand-computed: ones by descending index, then zeros)
    ones = list(range(0, length, 2))[::-1]
    zeros = list(range(1, length, 2))[::-1]
    expected = torch.empty(1, length)
    for position, index in enumerate(ones + zeros):
        expected[0, index] = (position + 1) / length
    assert torch.equal(rank_normalised(x), expected)
    assert torch.equal(published_rank_normalised(x), expected) == same


# --------------------------------------------------------------------------- STS-B fixes (1, 2, 5, 6)

def test_stsb_focal_losses_use_beta_20():
    pred, target, weights = sample_batch()
    pred, target = pred / 10, target / 10
    for name, square in (("focal_mse", True), ("focal_l1", False)):
        args = stsb_parser().parse_args(["--loss", name])
        expected = 0.0
        for p, t, w in zip(pred.flatten().tolist(), target.flatten().tolist(), weights.flatten().tolist()):
            d = abs(p - t)
            expected += w * (d * d if square else d) * (2 / (1 + math.exp(-20 * d)) - 1)
        assert stsb_train.stsb_loss(args)(pred, target, weights).item() == pytest.approx(expected / 12, rel=1e-5)


class PairFeatureModel(torch.nn.Module):
    """Stands in for the STS-B model: (pred, features) from inputs [B, 2]."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(2, 1)

    def forward(self, inputs, scores=None, epoch=None):
        return self.head(inputs), inputs * 1.0


def test_stsb_ranksim_sees_raw_scores_and_the_loss_score_over_5(monkeypatch):
    seen = {}

    def loss_fn(pred, targets, weights):
        seen["loss_targets"] = targets.clone()
        return ((pred - targets) ** 2).mean()

    def regularizer(features, targets, interp_strength_lambda, generator=None, gamma=None):
        seen["ranksim_targets"] = targets.clone()
        return features.sum() * 0.0

    monkeypatch.setattr(stsb_train, "batchwise_ranking_regularizer", regularizer)
    args = stsb_parser().parse_args(["--regularization_weight", "3e-4", "--interpolation_lambda", "2"])
    model = PairFeatureModel()
    scores = torch.tensor([[0.0], [1.6], [2.4], [5.0]])
    batch = (torch.randn(4, 2), scores, torch.ones(4, 1))
    stsb_train.train_step(model, batch, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn,
                          GlobalBatch(DistContext()), args, 0, StepOptions())
    assert torch.equal(seen["ranksim_targets"], scores)
    assert torch.equal(seen["loss_targets"], scores / 5)


@pytest.mark.parametrize("flags,trainable", [([], False), (["--train_words", "1"], True), (["--glove", "0"], True),
                                             (["--glove", "0", "--train_words", "0"], True)])
def test_stsb_random_embeddings_are_trained_like_the_published_ones(flags, trainable):
    args = stsb_parser().parse_args(["--d_word", "3", "--d_hid", "4"] + flags)
    model = stsb_train.build_model(args, ["@@PADDING@@", "@@UNKNOWN@@", "cat"], None, False)
    assert model.pair_encoder._text_field_embedder.token_embedder_words.weight.requires_grad is trainable


@pytest.mark.parametrize("argv_tail", [["--resume"], ["--resume", "--lr", "1e-3"]])
def test_bare_resume_continues_the_run_named_by_store_name(tmp_path, argv_tail):
    ckpt = tmp_path / "myrun" / "ckpt.pth.tar"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"placeholder")
    args = stsb_parser().parse_args(["--store_root", str(tmp_path), "--store_name", "myrun"] + argv_tail)
    resolve_resume_by_name(args)
    assert args.resume == str(ckpt)
    path_form = stsb_parser().parse_args(["--resume", str(ckpt)])
    resolve_resume_by_name(path_form)
    assert path_form.resume == str(ckpt)


def test_bare_resume_without_store_name_is_a_one_line_error():
    args = stsb_parser().parse_args(["--resume"])
    with pytest.raises(UserError, match=r"--resume without a checkpoint continues the run named by --store_name"):
        resolve_resume_by_name(args)


def test_help_documents_both_resume_forms_and_the_quirks_flag():
    text = " ".join(stsb_parser().format_help().split())
    assert "--resume [CKPT]" in text and "<store_root>/<store_name>/ckpt.pth.tar" in text
    assert "--published_quirks" in text
