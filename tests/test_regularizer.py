"""batchwise_ranking_regularizer against a plain per-row loop written here from docs/published_behaviour.md §1."""
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chi2
from torch.utils._python_dispatch import TorchDispatchMode

from ranksim.regularizer import batchwise_ranking_regularizer, reduce_ties

# On CPU the default form gathers the kept samples ("compact"); form="masked" forces the sync-free
# form accelerators run, so that CPU tests cover both.
PATHS = ["public", "masked"]


def regularizer_for(path):
    if path == "public":
        return batchwise_ranking_regularizer

    def masked(features, targets, lam, label_distance="l1", **kwargs):
        return batchwise_ranking_regularizer(features, targets, lam, label_distance=label_distance, form="masked",
                                             **kwargs)

    return masked

# ---------------------------------------------------------------- independent reference (docs/published_behaviour.md §1)


def ref_rank_normalised(values):
    """(descending 0-based rank + 1) / m of a list; ties: the larger index ranks first."""
    order = sorted(range(len(values)), key=lambda j: (-values[j], -j))
    out = [0.0] * len(values)
    for position, j in enumerate(order):
        out[j] = (position + 1) / len(values)
    return out


class RefTrueRanker(torch.autograd.Function):
    """TrueRanker of ONE row [1, m] with list-based ranks (docs/published_behaviour.md §1.5)."""

    @staticmethod
    def forward(ctx, row, lam):
        ranks = torch.tensor([ref_rank_normalised(row[0].tolist())])
        ctx.lam = lam
        ctx.save_for_backward(row, ranks)
        return ranks

    @staticmethod
    def backward(ctx, grad):
        row, ranks = ctx.saved_tensors
        perturbed = torch.tensor([ref_rank_normalised((row + ctx.lam * grad)[0].tolist())])
        return -(ranks - perturbed) / (ctx.lam + 1e-8), None


def ref_loss_no_reduction(features, targets, lam):
    """docs/published_behaviour.md §1 steps 2-3 as a per-row loop over the given samples (no tie reduction)."""
    x = F.normalize(features.float().reshape(features.shape[0], -1), dim=1)
    sims = x @ x.T
    y = targets.reshape(-1).float().tolist()
    loss = torch.zeros(())
    for i in range(len(y)):
        label_ranks = torch.tensor([ref_rank_normalised([-abs(y[i] - yj) for yj in y])])
        feature_ranks = RefTrueRanker.apply(sims[i : i + 1], lam)
        loss = loss + ((feature_ranks - label_ranks) ** 2).mean()
    return loss


def loss_and_grad(fn, features, *args, **kwargs):
    leaf = features.detach().clone().requires_grad_(True)
    loss = fn(leaf, *args, **kwargs)
    loss.backward()
    return loss.detach(), leaf.grad


def assert_close_rel(actual, expected, rel=1e-5):
    scale = expected.abs().max().clamp_min(1e-12)
    assert (actual.float() - expected.float()).abs().max() <= rel * scale, (actual, expected)


# ---------------------------------------------------------------- no ties: exact loop equality


@pytest.mark.parametrize(
    "batch, shape, lam, labels",
    [
        (16, (32,), 2.0, "float"),
        (24, (3, 4, 4), 1.0, "float"),
        # Distinct integers: no repeated label, but rows hold distance ties (y_i - d, y_i + d)
        # that are broken by batch position, so the batch must be used in its own order.
        (30, (20,), 2.0, "int"),
        (9, (5,), 50.0, "int"),
    ],
)
@pytest.mark.parametrize("path", PATHS)
def test_no_ties_loss_and_gradient_equal_loop(batch, shape, lam, labels, path):
    gen = torch.Generator().manual_seed(batch)
    features = torch.randn(batch, *shape, generator=gen)
    if labels == "float":
        targets = torch.rand(batch, 1, generator=gen) * 100
    else:
        targets = torch.randperm(3 * batch, generator=gen)[:batch].float().reshape(batch, 1)
    loss, grad = loss_and_grad(regularizer_for(path), features, targets, lam)
    ref, ref_grad = loss_and_grad(ref_loss_no_reduction, features, targets, lam)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert_close_rel(loss, ref)
    assert ref_grad.abs().max() > 0  # the comparison is not trivially between zeros
    assert_close_rel(grad, ref_grad)


def test_no_ties_keeps_batch_order_in_reduce_ties():
    features = torch.randn(5, 3)
    targets = torch.tensor([4.0, 1.0, 3.0, 0.0, 2.0])
    kept_features, kept_targets = reduce_ties(features, targets)
    assert torch.equal(kept_features, features) and torch.equal(kept_targets, targets)


# ---------------------------------------------------------------- repeated labels


@pytest.mark.parametrize("path", PATHS)
def test_ties_fixed_seed_equals_loop_on_kept_subset(path):
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(40, 16, generator=gen)
    targets = torch.randint(0, 12, (40, 1), generator=gen).float()
    torch.manual_seed(11)
    loss, grad = loss_and_grad(regularizer_for(path), features, targets, 2.0)
    torch.manual_seed(11)  # reduce_ties draws the same random numbers
    kept_features, kept_targets = reduce_ties(features, targets)

    # One sample per distinct label, ordered by label, each an actual sample of the batch.
    distinct = sorted(set(targets.reshape(-1).tolist()))
    assert kept_targets.reshape(-1).tolist() == distinct
    kept_rows = []
    for row, label in zip(kept_features, kept_targets.reshape(-1).tolist()):
        matches = [i for i in range(40) if torch.equal(features[i], row)]
        assert len(matches) == 1 and targets[matches[0], 0].item() == label
        kept_rows.append(matches[0])

    # The loop on the kept subset, gradient scattered back to the batch (zero for dropped rows).
    leaf = features.clone().requires_grad_(True)
    ref = ref_loss_no_reduction(leaf[kept_rows], kept_targets, 2.0)
    ref.backward()
    assert_close_rel(loss, ref.detach())
    assert leaf.grad.abs().max() > 0
    assert_close_rel(grad, leaf.grad)
    dropped = [i for i in range(40) if i not in kept_rows]
    assert torch.equal(grad[dropped], torch.zeros(len(dropped), 16))


@pytest.mark.parametrize("path", PATHS)
def test_ties_choice_uniform_and_independent_over_many_draws(path):
    # Labels 0 x3, 1 x2, 2 x1: six possible kept subsets. Each gives its own loop gradient (zero on
    # its dropped rows), so the regularizer's gradient tells which subset a draw kept.
    targets = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 2.0])
    features = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
    subsets = list(itertools.product([0, 1, 2], [3, 4], [5]))
    subset_grads = []
    for subset in subsets:
        leaf = features.clone().requires_grad_(True)
        ref_loss_no_reduction(leaf[list(subset)], targets[list(subset)], 10.0).backward()
        subset_grads.append(leaf.grad)
    for a, b in itertools.combinations(subset_grads, 2):
        assert (a - b).abs().max() > 1e-3  # distinct, so the identification is unambiguous

    draws = 2000 if path == "public" else 1000  # keeps the file fast
    counts = [0] * len(subsets)
    for seed in range(draws):
        torch.manual_seed(seed)
        _, grad = loss_and_grad(regularizer_for(path), features, targets, 10.0)
        matches = [k for k, ref in enumerate(subset_grads) if (grad - ref).abs().max() <= 1e-5]
        assert len(matches) == 1, seed
        counts[matches[0]] += 1
        if seed < 100:  # reduce_ties keeps the same samples under the same seed
            torch.manual_seed(seed)
            kept_features, kept_targets = reduce_ties(features, targets)
            assert torch.equal(kept_features, features[list(subsets[matches[0]])])
            assert kept_targets.tolist() == [0.0, 1.0, 2.0]
    # Pearson chi-square on the 6 joint cells (uniform and independent choices), df = 5.
    expected = draws / len(subsets)
    statistic = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2.sf(statistic, df=len(subsets) - 1) > 1e-4, counts


def test_ties_order_kept_samples_by_label():
    targets = torch.tensor([[7.0], [2.0], [7.0], [5.0], [2.0], [9.0]])
    features = torch.arange(6.0).reshape(6, 1).expand(6, 3)
    for seed in range(20):
        torch.manual_seed(seed)
        kept_features, kept_targets = reduce_ties(features, targets)
        assert kept_targets.shape == (4, 1)
        assert kept_targets.reshape(-1).tolist() == [2.0, 5.0, 7.0, 9.0]
        for row, label in zip(kept_features[:, 0].tolist(), kept_targets.reshape(-1).tolist()):
            assert targets[int(row), 0].item() == label


# ---------------------------------------------------------------- dtypes, shapes, edge cases


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features(dtype, path):
    gen = torch.Generator().manual_seed(7)
    features = torch.randn(20, 8, generator=gen).to(dtype)
    targets = torch.rand(20, generator=gen)
    loss, grad = loss_and_grad(regularizer_for(path), features, targets, 2.0)
    ref, ref_grad = loss_and_grad(ref_loss_no_reduction, features.float(), targets, 2.0)
    assert loss.dtype == torch.float32
    assert grad.dtype == dtype and torch.isfinite(grad.float()).all()
    assert_close_rel(loss, ref)
    assert_close_rel(grad.float(), ref_grad.to(dtype).float(), rel=1e-2)


@pytest.mark.parametrize(
    "features, targets",
    [
        (torch.randn(1, 10), torch.tensor([[3.0]])),  # B = 1
        (torch.randn(5, 10), torch.full((5, 1), 4.0)),  # one distinct label
        (torch.zeros(4, 10), torch.full((4,), 1.0)),  # ... with all-zero features
    ],
)
@pytest.mark.parametrize("path", PATHS)
def test_degenerate_batches_give_zero_loss_and_gradient(features, targets, path):
    loss, grad = loss_and_grad(regularizer_for(path), features, targets, 2.0)
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    assert torch.isfinite(grad).all() and torch.equal(grad, torch.zeros_like(features))


@pytest.mark.parametrize("path", PATHS)
def test_targets_flat_and_column_give_same_result(path):
    gen = torch.Generator().manual_seed(8)
    features = torch.randn(32, 6, generator=gen)
    targets = torch.randint(0, 10, (32,), generator=gen).float()
    torch.manual_seed(1)
    loss_flat, grad_flat = loss_and_grad(regularizer_for(path), features, targets, 2.0)
    torch.manual_seed(1)
    loss_col, grad_col = loss_and_grad(regularizer_for(path), features, targets[:, None], 2.0)
    assert torch.equal(loss_flat, loss_col) and torch.equal(grad_flat, grad_col)


def test_integer_targets_accepted():
    features = torch.randn(10, 4, generator=torch.Generator().manual_seed(9))
    targets = torch.arange(10)
    loss, _ = loss_and_grad(batchwise_ranking_regularizer, features, targets, 2.0)
    ref, _ = loss_and_grad(ref_loss_no_reduction, features, targets.float(), 2.0)
    assert_close_rel(loss, ref)


@pytest.mark.parametrize("lam", [0.0, -1.0, float("nan")])
def test_lambda_must_be_positive(lam):
    with pytest.raises(ValueError, match="interp_strength_lambda"):
        batchwise_ranking_regularizer(torch.randn(4, 3), torch.arange(4.0), lam)


def test_length_mismatch_names_both_arguments():
    with pytest.raises(ValueError, match="features and targets: batch sizes differ"):
        batchwise_ranking_regularizer(torch.randn(4, 3), torch.arange(5.0), 2.0)
    with pytest.raises(ValueError, match="features and targets"):
        reduce_ties(torch.randn(4, 3), torch.arange(3.0))


def test_bad_target_shape_and_empty_batch():
    with pytest.raises(ValueError, match=r"targets: expected shape \[B\], \[B, 1\] or \[B, d\]"):
        batchwise_ranking_regularizer(torch.randn(4, 3), torch.zeros(4, 2, 3), 2.0)
    with pytest.raises(ValueError, match="features: expected a non-empty batch"):
        batchwise_ranking_regularizer(torch.randn(0, 3), torch.zeros(0), 2.0)


# ---------------------------------------------------------------- no host-device synchronisation


def test_runs_on_meta_tensors_so_nothing_reads_values_on_the_host():
    # Meta tensors carry no data: .item(), .cpu(), .tolist(), .nonzero(), torch.unique, boolean
    # indexing and Python `if` on a tensor all raise on them, so success proves none is used.
    features = torch.randn(16, 8, device="meta", requires_grad=True)
    targets = torch.randn(16, 1, device="meta")
    loss = batchwise_ranking_regularizer(features, targets, 2.0)
    loss.backward()
    assert loss.shape == () and features.grad.shape == (16, 8)


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_masked_form_dispatches_no_syncing_operator():
    features = torch.randn(12, 5, requires_grad=True)
    targets = torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 4.0, 5.0, 6.0, 6.0, 7.0, 8.0])
    with _OpRecorder() as recorder:
        regularizer_for("masked")(features, targets, 2.0).backward()
    syncing = {"aten._local_scalar_dense", "aten.nonzero", "aten._unique2", "aten.unique_consecutive",
               "aten.unique_dim", "aten.masked_select", "aten.index_put_"}
    assert recorder.ops & syncing == set(), recorder.ops & syncing
    assert "aten.sort" in recorder.ops  # the recorder does see the dispatched operators


# ---------------------------------------------------------------- the benchmark script still runs


def test_bench_quick_runs_and_verifies_against_loop():
    # The bench checks library == loop (loss and gradient) before timing and exits non-zero if not.
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(repo / "bench" / "regularizer.py"), "--quick", "--device", "cpu"],
                            capture_output=True, text=True, timeout=120, cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "verified against the loop before timing" in result.stdout
    assert result.stdout.count("PASS") + result.stdout.count("FAIL") == 6


# ---------------------------------------------------------------- label vectors [B, d], L1 / L2


def ref_vector_loss(features, targets, lam, label_distance):
    """The per-row loop for label vectors targets [n, d] (no tie reduction), distances in Python."""
    x = F.normalize(features.float().reshape(features.shape[0], -1), dim=1)
    sims = x @ x.T
    y = targets.reshape(targets.shape[0], -1).double().tolist()

    def distance(a, b):
        if label_distance == "l1":
            return sum(abs(u - v) for u, v in zip(a, b))
        return sum((u - v) ** 2 for u, v in zip(a, b)) ** 0.5

    loss = torch.zeros(())
    for i in range(len(y)):
        label_ranks = torch.tensor([ref_rank_normalised([-distance(y[i], yj) for yj in y])])
        loss = loss + ((RefTrueRanker.apply(sims[i : i + 1], lam) - label_ranks) ** 2).mean()
    return loss


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("label_distance", ["l1", "l2"])
@pytest.mark.parametrize("path", PATHS)
def test_label_vectors_equal_per_row_loop_with_ties(dims, label_distance, path):
    gen = torch.Generator().manual_seed(10 + dims)
    batch = 30
    features = torch.randn(batch, 12, generator=gen)
    # Few values per column: repeated label vectors (ties to reduce) and equal distances in rows.
    targets = torch.randint(0, 3, (batch, dims), generator=gen).float()
    fn = regularizer_for(path)
    torch.manual_seed(4)
    loss, grad = loss_and_grad(lambda f, t, lam: fn(f, t, lam, label_distance=label_distance), features, targets, 2.0)
    torch.manual_seed(4)
    kept_features, kept_targets = reduce_ties(features, targets)

    # One sample per distinct label vector, in ascending lexicographic order, each a real sample.
    distinct = sorted(set(map(tuple, targets.tolist())))
    assert [tuple(t) for t in kept_targets.tolist()] == distinct
    kept_rows = [int((features == row).all(dim=1).nonzero()[0, 0]) for row in kept_features]
    assert [tuple(targets[i].tolist()) for i in kept_rows] == distinct

    leaf = features.clone().requires_grad_(True)
    ref = ref_vector_loss(leaf[kept_rows], kept_targets, 2.0, label_distance)
    ref.backward()
    assert_close_rel(loss, ref.detach())
    assert leaf.grad.abs().max() > 0
    assert_close_rel(grad, leaf.grad)
    dropped = [i for i in range(batch) if i not in kept_rows]
    assert torch.equal(grad[dropped], torch.zeros(len(dropped), 12))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("label_distance", ["l1", "l2"])
@pytest.mark.parametrize("path", PATHS)
def test_distinct_label_vectors_keep_batch_order(dims, label_distance, path):
    gen = torch.Generator().manual_seed(20 + dims)
    features = torch.randn(16, 8, generator=gen)
    targets = torch.randn(16, dims, generator=gen)
    loss, grad = loss_and_grad(lambda f, t, lam: regularizer_for(path)(f, t, lam, label_distance=label_distance),
                               features, targets, 2.0)
    ref, ref_grad = loss_and_grad(lambda f, t, lam: ref_vector_loss(f, t, lam, label_distance), features, targets, 2.0)
    assert_close_rel(loss, ref)
    assert_close_rel(grad, ref_grad)


@pytest.mark.parametrize("path", PATHS)
def test_one_dimensional_l2_is_l1_bit_for_bit(path):
    gen = torch.Generator().manual_seed(12)
    features = torch.randn(24, 6, generator=gen)
    targets = torch.rand(24, 1, generator=gen) * 7
    results = []
    for label_distance in ("l1", "l2"):
        torch.manual_seed(0)
        results.append(loss_and_grad(regularizer_for(path), features, targets, 2.0, label_distance=label_distance))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_tie_choice_among_duplicate_label_vectors_is_uniform():
    # Three copies of (1, 2), two of (0, 5): reduce_ties keeps each copy about equally often.
    targets = torch.tensor([[1.0, 2.0], [0.0, 5.0], [1.0, 2.0], [1.0, 2.0], [0.0, 5.0], [1.0, 0.0]])
    features = torch.arange(6.0)[:, None].expand(6, 2)
    counts = {i: 0 for i in range(5)}
    draws = 600
    for seed in range(draws):
        torch.manual_seed(seed)
        kept_features, kept_targets = reduce_ties(features, targets)
        assert kept_targets.tolist() == [[0.0, 5.0], [1.0, 0.0], [1.0, 2.0]]
        for row in kept_features[:, 0].tolist():
            if int(row) != 5:
                counts[int(row)] += 1
    for group in ([0, 2, 3], [1, 4]):
        observed = [counts[i] for i in group]
        expected = draws / len(group)
        statistic = sum((c - expected) ** 2 / expected for c in observed)
        assert chi2.sf(statistic, df=len(group) - 1) > 1e-4, observed


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("features, targets", [
    (torch.randn(1, 6), torch.tensor([[1.0, 2.0]])),  # B = 1
    (torch.randn(5, 6), torch.tensor([[1.0, 2.0]]).expand(5, 2)),  # one distinct label vector
])
def test_degenerate_label_vector_batches_give_zero(features, targets, path):
    loss, grad = loss_and_grad(regularizer_for(path), features, targets, 2.0)
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(features))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_targets_refused_naming_them(bad):
    targets = torch.tensor([[1.0, 2.0], [3.0, bad], [4.0, 5.0]])
    with pytest.raises(ValueError, match=rf"targets: 1 non-finite value\(s\), the first \[3.0, {bad!r}\] at batch index 1"):
        batchwise_ranking_regularizer(torch.randn(3, 4), targets, 2.0)
    with pytest.raises(ValueError, match="non-finite"):
        reduce_ties(torch.randn(3, 4), targets[:, 1])


def test_non_finite_targets_off_the_cpu_make_the_loss_nan():
    # Targets on an accelerator are not checked (that would wait for the device): meta tensors,
    # which hold no values, pass. The masked form is what runs there and it never reads a value on
    # the host, so on CPU it shows what happens to NaN targets on an accelerator: a NaN loss.
    loss = batchwise_ranking_regularizer(torch.randn(4, 3, device="meta"), torch.zeros(4, 2, device="meta"), 2.0)
    assert loss.shape == ()
    targets = torch.tensor([1.0, float("nan"), 2.0, 3.0])
    assert torch.isnan(batchwise_ranking_regularizer(torch.randn(4, 3), targets, 2.0, form="masked"))
    # Still on the CPU (a DataLoader's), the targets are checked for free whatever the features' device.
    with pytest.raises(ValueError, match="non-finite"):
        batchwise_ranking_regularizer(torch.randn(4, 3, device="meta"), targets, 2.0)


def test_form_must_be_known_and_compact_checks_targets():
    with pytest.raises(ValueError, match="form='fast' is not one of auto, masked, compact"):
        batchwise_ranking_regularizer(torch.randn(3, 4), torch.arange(3.0), 2.0, form="fast")
    with pytest.raises(ValueError, match="non-finite"):
        batchwise_ranking_regularizer(torch.randn(3, 4), torch.tensor([1.0, float("inf"), 2.0]), 2.0, form="compact")


def test_label_distance_must_be_known():
    with pytest.raises(ValueError, match="label_distance='cosine' is not one of l1, l2"):
        batchwise_ranking_regularizer(torch.randn(3, 4), torch.arange(3.0), 2.0, label_distance="cosine")


# ---------------------------------------------------------------- the RankSim module


def test_ranksim_module_is_gamma_times_the_function_with_the_same_draws():
    import ranksim

    gen = torch.Generator().manual_seed(13)
    features = torch.randn(40, 8, generator=gen)
    targets = torch.randint(0, 5, (40, 2), generator=gen).float()
    module = ranksim.RankSim(gamma=0.75, interp_strength_lambda=2.0, label_distance="l2")
    torch.manual_seed(3)
    loss, grad = loss_and_grad(lambda f, t: module(f, t), features, targets)
    torch.manual_seed(3)
    # gamma multiplies the loss before backward, as in the paper's objective (the blackbox gradient
    # is not linear in its incoming gradient, so gamma * grad(loss) would be a different number).
    ref, ref_grad = loss_and_grad(lambda f, t: 0.75 * batchwise_ranking_regularizer(f, t, 2.0, label_distance="l2"),
                                  features, targets)
    assert torch.equal(loss, ref) and torch.equal(grad, ref_grad)
    assert list(module.state_dict()) == [] and "label_distance='l2'" in repr(module)
    with pytest.raises(ValueError, match="gamma=-1"):
        ranksim.RankSim(-1, 2.0)
    with pytest.raises(ValueError, match="interp_strength_lambda=0"):
        ranksim.RankSim(1.0, 0)


def test_autocast_computes_in_float32():
    gen = torch.Generator().manual_seed(14)
    features = torch.randn(64, 32, generator=gen)
    targets = torch.randint(0, 20, (64,), generator=gen).float()
    torch.manual_seed(0)
    ref, ref_grad = loss_and_grad(batchwise_ranking_regularizer, features, targets, 2.0)
    torch.manual_seed(0)
    leaf = features.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = batchwise_ranking_regularizer(leaf, targets, 2.0)
    loss.backward()  # outside autocast, as torch recommends: backward ops follow their forward dtypes
    grad = leaf.grad
    assert loss.dtype == torch.float32 and torch.equal(loss, ref) and torch.equal(grad, ref_grad)


def test_torch_compile_of_a_model_step_matches_eager():
    from ranksim import RankSim

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU())
    head = torch.nn.Linear(16, 1)
    ranksim_loss = RankSim(gamma=1.0, interp_strength_lambda=2.0)

    def step(x, y):
        features = model(x)
        loss = F.l1_loss(head(features), y) + ranksim_loss(features, y)
        loss.backward()
        return loss.detach()

    x = torch.randn(32, 5, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 6, (32, 1), generator=torch.Generator().manual_seed(2)).float()
    torch.manual_seed(5)
    eager = step(x, y)
    eager_grad = model[0].weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(5)  # the tie draw runs outside the compiled graph, from torch's RNG
    compiled = torch.compile(step)(x, y)
    assert torch.allclose(compiled, eager, rtol=1e-6)
    assert torch.allclose(model[0].weight.grad, eager_grad, rtol=1e-5, atol=1e-7)


def test_scaling_bench_quick_runs_and_prints_ratios():
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(repo / "bench" / "scaling.py"), "--quick", "--device", "cpu"],
                            capture_output=True, text=True, timeout=180, cwd=repo)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:2] in ("16", "32")]
    assert len(rows) == 4 and all(row[5].endswith("x") for row in rows)
    assert result.stdout.count("PASS") + result.stdout.count("FAIL") == 2


# ---------------------------------------------------------------- scale-correct gradient (gamma=)


def scaled_feature_grad(fn, features, targets, scale, seed=0):
    """The feature gradient of (scale * fn(features, targets)), divided by scale: what a GradScaler's
    unscale gives. The same tie draw for every scale (seed)."""
    leaf = features.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    (scale * fn(leaf, targets)).backward()
    return leaf.grad / scale


def age_like_batch(seed, batch=48, dim=24):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, generator=gen)
    targets = (torch.randn(batch, generator=gen) * 12 + 40).round().reshape(batch, 1)  # repeated ages
    return features, targets


@pytest.mark.parametrize("scale", [1.0, 2.0 ** 8, 2.0 ** 16])
@pytest.mark.parametrize("path", PATHS)
def test_gradient_does_not_change_with_a_factor_on_the_loss(scale, path):
    from ranksim import RankSim

    features, targets = age_like_batch(21)
    form = {"form": "masked"} if path == "masked" else {}
    module = RankSim(gamma=100.0, interp_strength_lambda=2.0)
    scale_correct = (
        lambda f, t: module(f, t),  # RankSim passes gamma itself
        lambda f, t: 100.0 * batchwise_ranking_regularizer(f, t, 2.0, gamma=100.0, **form),
    )
    for fn in scale_correct:
        expected = scaled_feature_grad(fn, features, targets, 1.0)
        assert expected.abs().max() > 0
        assert_close_rel(scaled_feature_grad(fn, features, targets, scale), expected, rel=1e-3)
    if scale > 1:  # the published gradient (gamma=None) is the one that shrinks: what the test guards against
        published = lambda f, t: 100.0 * batchwise_ranking_regularizer(f, t, 2.0, **form)  # noqa: E731
        shrunk = scaled_feature_grad(published, features, targets, scale).norm()
        assert shrunk < 0.5 * scaled_feature_grad(published, features, targets, 1.0).norm()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("gamma", [1.0, 0.3, 100.0])
def test_gamma_path_without_scaling_equals_the_published_one_exactly(gamma, path):
    features, targets = age_like_batch(22)
    fn = regularizer_for(path)
    torch.manual_seed(6)
    loss, grad = loss_and_grad(lambda f, t, lam: gamma * fn(f, t, lam, gamma=gamma), features, targets, 2.0)
    torch.manual_seed(6)
    ref, ref_grad = loss_and_grad(lambda f, t, lam: gamma * fn(f, t, lam), features, targets, 2.0)
    assert torch.equal(loss, ref) and torch.equal(grad, ref_grad)
    # ... and the published gradient is the plain per-row loop's (on the samples the tie reduction kept).
    torch.manual_seed(6)
    kept_features, kept_targets = reduce_ties(features, targets)
    kept_rows = [int((features == row).all(dim=1).nonzero()[0, 0]) for row in kept_features]
    leaf = features.clone().requires_grad_(True)
    (gamma * ref_loss_no_reduction(leaf[kept_rows], kept_targets, 2.0)).backward()
    assert_close_rel(grad, leaf.grad)


def test_ranksim_gamma_zero_gives_zero_and_zero_gradient():
    from ranksim import RankSim

    features, targets = age_like_batch(23)
    loss, grad = loss_and_grad(lambda f, t: RankSim(0.0, 2.0)(f, t), features, targets)
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(features))


@pytest.mark.parametrize("gamma", [0, 0.0, -1.0, float("nan"), float("inf"), "1", True])
def test_gamma_must_be_a_finite_positive_number(gamma):
    with pytest.raises(ValueError, match=r"^gamma=.*must be a finite number > 0"):
        batchwise_ranking_regularizer(torch.randn(4, 3), torch.arange(4.0), 2.0, gamma=gamma)


# ---------------------------------------------------------------- tie_keys, torch.compile(fullgraph=True), CUDA graphs


def ties_batch(seed, batch=12, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, 6, generator=gen)
    targets = torch.randint(0, 5, (batch, 1), generator=gen).float()  # ties: the keys pick the kept samples
    return features.to(device), targets.to(device)


def test_tie_keys_are_the_draw_the_function_makes():
    features, targets = ties_batch(30, batch=40)
    torch.manual_seed(8)
    drawn = loss_and_grad(batchwise_ranking_regularizer, features, targets, 2.0)
    torch.manual_seed(8)
    keys = torch.rand(40)
    given = loss_and_grad(batchwise_ranking_regularizer, features, targets, 2.0, tie_keys=keys)
    assert torch.equal(drawn[0], given[0]) and torch.equal(drawn[1], given[1])
    other = loss_and_grad(batchwise_ranking_regularizer, features, targets, 2.0, tie_keys=torch.rand(40))
    assert not torch.equal(other[1], given[1])  # other keys keep other samples
    with pytest.raises(ValueError, match=r"^tie_keys: expected a float tensor of shape \(40,\).*got \(39,\)"):
        batchwise_ranking_regularizer(features, targets, 2.0, tie_keys=torch.rand(39))


def test_compiles_with_fullgraph_when_given_tie_keys():
    # aot_eager traces forward and backward into graphs as inductor would, without generating code
    # (inductor itself takes about a minute on this 2-core machine; it also gives these numbers).
    features, targets = ties_batch(31)
    keys = torch.rand(12, generator=torch.Generator().manual_seed(2))

    def regularizer(f, t, k):
        return 3.0 * batchwise_ranking_regularizer(f, t, 2.0, gamma=3.0, tie_keys=k)

    eager = loss_and_grad(regularizer, features, targets, keys)
    compiled = loss_and_grad(torch.compile(regularizer, fullgraph=True, backend="aot_eager"), features, targets, keys)
    assert eager[1].abs().max() > 0
    assert torch.equal(compiled[0], eager[0]) and torch.allclose(compiled[1], eager[1], rtol=1e-5, atol=1e-7)


def test_eager_calls_never_reach_torch_compiler_disable(monkeypatch):
    # torch.compiler.disable imports torch._dynamo (about 1.3 s per process): eager calls must not use it,
    # only a call under torch.compile does (the draw and the target check then run eagerly).
    def refuse(*args, **kwargs):
        raise AssertionError("torch.compiler.disable called outside torch.compile")

    monkeypatch.setattr(torch.compiler, "disable", refuse)
    features, targets = ties_batch(33)
    loss_and_grad(batchwise_ranking_regularizer, features, targets, 2.0)  # compact form, targets checked
    loss_and_grad(batchwise_ranking_regularizer, features, targets, 2.0, form="masked")
    reduce_ties(features, targets)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA GPU")
def test_a_step_with_ranksim_is_captured_in_a_cuda_graph():
    import copy

    from ranksim import RankSim

    device = torch.device("cuda")
    torch.manual_seed(0)
    body = torch.nn.Linear(6, 16).to(device)
    twin = copy.deepcopy(body)  # the same weights, run eagerly for reference
    ranksim_loss = RankSim(gamma=2.0, interp_strength_lambda=2.0)
    x, targets = ties_batch(32, batch=32, device=device)
    keys = torch.rand(32, device=device)  # a static input of the graph: new draws are copied in

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph (cuBLAS handles, sort buffers)
        for _ in range(2):
            body.zero_grad(set_to_none=True)
            ranksim_loss(body(x), targets, tie_keys=keys).backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    body.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        captured_loss = ranksim_loss(body(x), targets, tie_keys=keys)
        captured_loss.backward()
    captured_grad = body.weight.grad
    losses = set()
    for seed in range(3):
        keys.copy_(torch.rand(32, generator=torch.Generator().manual_seed(seed)).to(device))
        graph.replay()
        twin.zero_grad(set_to_none=True)
        eager = ranksim_loss(twin(x), targets, tie_keys=keys)
        eager.backward()
        torch.cuda.synchronize()
        assert torch.allclose(captured_loss, eager, rtol=1e-6)
        assert torch.allclose(captured_grad, twin.weight.grad, rtol=1e-4, atol=1e-6)
        losses.add(captured_loss.item())
    assert len(losses) > 1  # the replays used the new keys


def test_bench_op_count_sees_the_short_fixed_sequence(monkeypatch):
    # bench/regularizer.py's count of dispatched compute operators (what bench/gpu.py reports): a fixed
    # sequence of at most 45 (46 with gamma=), three of them row sorts of the B x B matrices plus the
    # two sorts of the tie reduction, and nothing that waits for the device.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    from regularizer import count_dispatched_ops

    published = count_dispatched_ops(batch=24, dim=8, gamma=None)
    scale_correct = count_dispatched_ops(batch=24, dim=8, gamma=100.0)
    assert sum(published.values()) <= 45 and sum(scale_correct.values()) <= 46
    assert published["aten.sort"] == 5 and published["aten.mm"] == 2 and published["aten.index_copy_"] == 1
    assert not {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select"} & set(scale_correct)
    assert count_dispatched_ops(batch=24, dim=8, gamma=None) == published  # the same sequence every call
