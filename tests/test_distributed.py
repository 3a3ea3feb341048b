"""Multi-process training (ranksim/distributed.py, ranksim/harness/distributed.py) on CPU with gloo and 2 processes.

One spawned 2-process job does every collective check at once (process start-up dominates on two
cores) and saves what each rank computed; the single-process references are computed here, in the
test process, with the plain library functions:
  * the gathered RankSim value on a global batch with tied labels, and each rank's gradient;
  * one DDP training step (weighted L1 + RankSim + FDS smoothing, SGD) on a fixed global batch
    against one single-process step on the same batch: same parameters to 1e-5;
  * the FDS statistics pass over a train set the sampler has to pad (11 samples, 2 ranks);
  * predictions gathered in dataset order without the sampler's duplicates; LDS weights per rank.
Then a tiny agedb-dir/train.py run under torchrun (2 processes) whose results.json must equal a
single-process --evaluate of its best checkpoint.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from folder_modules import age_program, age_train_one_epoch, load_folder_module
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ranksim.distributed import GatheredRankSim
from ranksim.fds import FDS
from ranksim.harness.cli import UserError
from ranksim.harness.data.synthetic import make_synthetic_age_dataset
from ranksim.harness.distributed import (
    DistContext,
    GlobalBatch,
    fds_gather,
    gather_predictions,
    mean_over_ranks,
    per_rank_batch,
    wrap_model,
)
from ranksim.harness.loop import StepOptions, update_fds_statistics
from ranksim.losses import weighted_l1_loss
from ranksim.regularizer import batchwise_ranking_regularizer, reduce_ties
from ranksim.weighting import label_weights

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
GAMMA, LAMBDA, SEED = 5.0, 2.0, 3
FEATURE_DIM = 6


class TinyRegressor(nn.Module):
    """The ResNet regressor's interface (forward(x, targets, epoch) -> (pred, encoding) with FDS smoothing
    in place) on a BatchNorm-free MLP, so that per-sample features do not depend on how the batch is
    split (BatchNorm without --sync_bn normalises each rank's share, by design)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, FEATURE_DIM))
        self.linear = nn.Linear(FEATURE_DIM, 1)
        self.FDS = FDS(FEATURE_DIM, bucket_num=20, bucket_start=0, start_update=0, start_smooth=1, ks=3,
                       sigma=1.0)

    def forward(self, x, targets=None, epoch=None):
        encoding = self.backbone(x)
        if self.training and epoch is not None:
            encoding = self.FDS.smooth(encoding, targets, epoch)
        pred = self.linear(encoding)
        return (pred, encoding) if self.training else pred


def fixed_data():
    """FDS-pass set (11 samples: the 2-rank sampler pads it) and the global training batch (8 samples,
    tied labels), both deterministic."""
    g = torch.Generator().manual_seed(0)
    fds_x = torch.randn(11, 4, generator=g)
    fds_y = torch.tensor([1., 2., 2., 3., 5., 5., 5., 8., 9., 12., 15.]).reshape(-1, 1)
    x = torch.randn(8, 4, generator=g)
    y = torch.tensor([2., 5., 5., 9., 2., 12., 3., 5.]).reshape(-1, 1)  # ties across the two shards
    w = torch.rand(8, 1, generator=g) + 0.5
    return fds_x, fds_y, x, y, w


def new_model():
    torch.manual_seed(0)
    return TinyRegressor()


def fds_pass(model, sampler=None, gather=None):
    fds_x, fds_y, *_ = fixed_data()
    data = TensorDataset(fds_x, fds_y, torch.ones_like(fds_y))
    loader = DataLoader(data, batch_size=3, sampler=sampler)
    update_fds_statistics(model, loader, torch.device("cpu"), epoch=0, show_progress=False, gather=gather)


def worker(rank: int, out_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=WORLD)
    ctx = DistContext(rank=rank, world_size=WORLD)
    result = {}
    fds_x, fds_y, x, y, w = fixed_data()
    shard = slice(rank * 4, rank * 4 + 4)

    # 1. The gathered regularizer on leaf features: value and this rank's gradient.
    feats = torch.randn(8, FEATURE_DIM, generator=torch.Generator().manual_seed(1))
    local = feats[shard].clone().requires_grad_(True)
    reg = GatheredRankSim(1.0, LAMBDA, torch.device("cpu"), seed=SEED)(local, y[shard])
    reg.backward()
    result["reg_value"], result["reg_grad"] = reg.detach(), local.grad

    # 2. FDS pass (padded shards, gathered) and one DDP step with RankSim + FDS smoothing.
    model = new_model()
    sampler = DistributedSampler(TensorDataset(fds_x), num_replicas=WORLD, rank=rank, shuffle=False)
    fds_pass(model, sampler, fds_gather(sampler, len(fds_x)))
    result["fds_after_pass"] = {k: v.clone() for k, v in model.FDS.state_dict().items()}
    ddp = wrap_model(model, ctx)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    # agedb-dir/train.py's step: RankSim on the batch gathered by GlobalBatch, tie draws seeded alike on every rank
    loss, _ = age_train_one_epoch(ddp, [(x[shard], y[shard], w[shard])], optimizer, weighted_l1_loss, epoch=1,
                                  flags=["--regularization_weight", str(GAMMA), "--interpolation_lambda", str(LAMBDA),
                                         "--seed", str(SEED)], ctx=ctx,
                                  options=StepOptions(reduce_loss=mean_over_ranks), run_dir=f"{out_dir}/run{rank}")
    result["params"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result["loss"] = loss

    # 3. Predictions of a 5-sample split (rank 0 holds 0, 2, 4; rank 1 holds 1, 3 and a repeated 0).
    split_sampler = DistributedSampler(TensorDataset(torch.zeros(5)), num_replicas=WORLD, rank=rank, shuffle=False)
    held = np.array(list(split_sampler), dtype=np.float64)
    result["predictions"] = gather_predictions(held * 10 + 0.5, held, split_sampler, 5, ctx)

    # 4. LDS weights: every rank computes them from the train labels alone.
    weights = torch.from_numpy(label_weights(fds_y.numpy().reshape(-1) * 7, "sqrt_inv", lds=True, lds_ks=5,
                                             lds_sigma=2.0, label_kind="age"))
    gathered = [torch.empty_like(weights) for _ in range(WORLD)]
    dist.all_gather(gathered, weights)
    result["lds_equal_across_ranks"] = all(torch.equal(gathered[0], other) for other in gathered)

    # 5. STS-B's train_step on UNEQUAL shards of a global batch of 5 (3 + 2 pairs), as its last batch of
    #    an epoch can be: loss scaled by the rank's share, RankSim on the batch GlobalBatch gathers.
    stsb_train, stsb_data = stsb_modules()
    model = new_model()
    indices, sizes = stsb_data.rank_share(np.arange(5), ctx)
    share = len(indices) * WORLD / 5  # what sts-b-dir/train.py's loop passes
    ddp = wrap_model(model, ctx)
    stsb_train.train_step(ddp, (x[indices], 5 * y[indices] / 12, w[indices]), torch.optim.SGD(ddp.parameters(), lr=0.1),
                          weighted_l1_loss, GlobalBatch(ctx, seed=SEED), stsb_args(), 1, StepOptions(), sizes, share)
    result["stsb_unequal"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def stsb_modules():
    """sts-b-dir/train.py and its datasets.py (the program's step and its rank slicing)."""
    return (load_folder_module("stsb_train_ddp", REPO / "sts-b-dir" / "train.py"),
            load_folder_module("stsb_datasets_ddp", REPO / "sts-b-dir" / "datasets.py"))


def stsb_args():
    from ranksim.harness.stsb_flags import parse_args

    return parse_args(["--regularization_weight", str(GAMMA), "--interpolation_lambda", str(LAMBDA),
                       "--max_grad_norm", "0"])


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(str(out_dir),), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def seeded_generator():
    return torch.Generator().manual_seed(GatheredRankSim.epoch_seed(SEED, 0))


def single_process_step(model, x, y, w, gamma):
    """One SGD step on the whole batch of the hand-written objective (weighted L1 + gamma * RankSim with the
    epoch-0 tie draws the ranks share); returns the loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    pred, encoding = model(x, y, 1)
    loss = weighted_l1_loss(pred, y, w)
    if gamma:
        loss = loss + gamma * batchwise_ranking_regularizer(encoding, y, LAMBDA, generator=seeded_generator())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def test_gathered_regularizer_value_and_gradient_equal_single_process(spawned):
    _, _, _, y, _ = fixed_data()
    feats = torch.randn(8, FEATURE_DIM, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    assert len(reduce_ties(feats.detach(), y, seeded_generator())[1]) < 8  # ties are present and reduced
    reference = batchwise_ranking_regularizer(feats, y, LAMBDA, generator=seeded_generator())
    reference.backward()
    for rank, result in enumerate(spawned):
        # Same value on every rank: same gathered batch, same tie-reduction draws.
        assert torch.allclose(result["reg_value"], reference.detach(), rtol=1e-6, atol=1e-7), rank
        # The all-gather's backward sums the (identical) upstream gradients of the ranks: WORLD x this
        # rank's rows of the single-process gradient; DDP's average over ranks divides that back.
        expected = WORLD * feats.grad[rank * 4:rank * 4 + 4]
        assert torch.allclose(result["reg_grad"], expected, rtol=1e-5, atol=1e-7), rank
    assert feats.grad.abs().sum() > 0


def test_ddp_step_with_ranksim_and_fds_equals_single_process_step(spawned):
    _, _, x, y, w = fixed_data()
    model = new_model()
    fds_pass(model)  # the whole FDS set in one process
    fds_state = model.FDS.state_dict()
    for rank, result in enumerate(spawned):  # statistics from every rank's features, padding removed
        for key, value in fds_state.items():
            assert torch.allclose(result["fds_after_pass"][key], value, rtol=1e-5, atol=1e-6), (rank, key)
    assert fds_state["num_samples_tracked"].sum() == 11

    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = single_process_step(model, x, y, w, GAMMA)  # the whole batch, the tie draws the ranks share
    expected = model.state_dict()
    for rank, result in enumerate(spawned):
        assert result["params"].keys() == expected.keys()
        for key, value in expected.items():
            assert torch.allclose(result["params"][key], value, rtol=1e-5, atol=1e-5), (rank, key)
        assert result["loss"] == pytest.approx(loss, rel=1e-5)  # the global-batch loss on every rank

    # The regularizer's share of the step is large enough that a wrong scaling (e.g. x2 or x1/2) would fail.
    no_reg = new_model()
    fds_pass(no_reg)
    single_process_step(no_reg, x, y, w, gamma=0.0)
    w_key = "backbone.0.weight"
    reg_share = expected[w_key] - no_reg.state_dict()[w_key]
    assert reg_share.abs().max() > 100 * 1e-5 and (expected[w_key] - before[w_key]).abs().max() > 0


def test_stsb_step_on_unequal_shards_equals_the_single_process_step(spawned):
    """3 + 2 pairs: each rank's mean loss times its share (n_r * N / B) makes DDP's gradient average the
    mean over the 5 pairs; RankSim (on the raw scores 0-5, the head on score / 5) sees all 5."""
    _, _, x, y, w = fixed_data()
    scores = 5 * y[:5] / 12  # STS-B-like scores in [0, 5]
    model = new_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    pred, encoding = model(x[:5], scores, 1)
    loss = weighted_l1_loss(pred, scores / 5, w[:5]) + GAMMA * batchwise_ranking_regularizer(
        encoding, scores, LAMBDA, generator=seeded_generator())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for rank, result in enumerate(spawned):
        for key, value in model.state_dict().items():
            assert torch.allclose(result["stsb_unequal"][key], value, rtol=1e-5, atol=1e-6), (rank, key)
    # the shares matter: equal weighting of the two shards' means would give another step
    unweighted = new_model()
    pred, encoding = unweighted(x[:5], scores, 1)
    halves = (weighted_l1_loss(pred[:3], scores[:3] / 5, w[:3]) + weighted_l1_loss(pred[3:], scores[3:] / 5, w[3:5])) / 2
    (halves + GAMMA * batchwise_ranking_regularizer(encoding, scores, LAMBDA, generator=seeded_generator())).backward()
    torch.optim.SGD(unweighted.parameters(), lr=0.1).step()
    assert not torch.allclose(unweighted.state_dict()["linear.weight"], model.state_dict()["linear.weight"], atol=1e-6)


def test_predictions_gathered_in_dataset_order_once_each_and_lds_weights_equal(spawned):
    for result in spawned:
        preds, labels = result["predictions"]
        np.testing.assert_array_equal(labels, np.arange(5.0))
        np.testing.assert_array_equal(preds, np.arange(5.0) * 10 + 0.5)
        assert result["lds_equal_across_ranks"]


def test_global_batch_must_be_divisible_by_the_process_count():
    assert per_rank_batch(256, 8) == 32 and per_rank_batch(64, 1) == 64
    with pytest.raises(UserError, match=r"^--batch_size 15: .*divisible by the number of processes N = 2") as err:
        per_rank_batch(15, 2)
    assert "\n" not in str(err.value)


def test_sync_bn_on_a_cpu_torchrun_job_stops_before_anything_is_made(tmp_path, monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["--data_dir", str(tmp_path), "--store_root", str(tmp_path / "runs"), "--batch_size", "16", "--sync_bn"]
    with pytest.raises(UserError, match=r"^--sync_bn: SyncBatchNorm runs on GPUs only .*leave out --sync_bn on CPU$"):
        age_program().main(args)
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: --sync_bn is a no-op, the run gets past the check
    with pytest.raises(UserError, match=r"agedb\.csv: split file not found"):
        age_program().main(args)


def test_indivisible_batch_under_torchrun_stops_before_anything_is_made(tmp_path, monkeypatch):
    main = age_program().main

    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    args = ["--data_dir", str(tmp_path), "--store_root", str(tmp_path / "runs"), "--batch_size", "15"]
    with pytest.raises(SystemExit) as exit_info:  # rank 1 exits quietly with the error's exit code
        main(args)
    assert exit_info.value.code == 2
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match=r"^--batch_size 15: .*N = 2") as err:  # rank 0 reports it
        main(args)
    assert "\n" not in str(err.value) and not (tmp_path / "runs").exists()


def test_torchrun_run_writes_one_results_json_equal_to_single_process_evaluation(tmp_path):
    data = tmp_path / "data"
    make_synthetic_age_dataset(data, n_train=21, n_val=7, n_test=9, img_size=16, seed=0)
    store = tmp_path / "runs"
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    common = ["--data_dir", str(data), "--img_size", "16", "--model", "resnet18", "--workers", "0",
              "--store_root", str(store)]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), "train.py",
         *common, "--store_name", "ddp", "--batch_size", "8", "--epoch", "2", "--fds",
         "--regularization_weight", "100", "--interpolation_lambda", "2", "--reweight", "sqrt_inv", "--lds"],
        cwd=REPO / "agedb-dir", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("results.json")) == ["ddp/results.json"]
    assert [p.name for p in store.iterdir()] == ["ddp"]  # rank 1 made no directory of its own
    trained = json.loads((store / "ddp" / "results.json").read_text())
    log = (store / "ddp" / "training.log").read_text()
    assert "2 processes x 4 samples = global batch 8" in log and log.count("epoch 2/2 lr") == 1
    # RankSim health: rank 0 alone measures (its val shard, the fixed batch), once per epoch
    assert log.count("health epoch 1:") == log.count("health epoch 2:") == 1 and trained["health"]["epoch"] == 2
    assert trained["metrics"]["all"]["count"] == 9  # every test sample once, none duplicated
    ckpt = torch.load(store / "ddp" / "ckpt.best.pth.tar", map_location="cpu", weights_only=True)
    assert list(ckpt["state_dict"])[0] == "module.conv1.weight" and "module.FDS.running_mean" in ckpt["state_dict"]
    assert ckpt["state_dict"]["module.FDS.num_samples_tracked"].sum() == 2 * 21  # each train sample once/epoch

    proc = subprocess.run([sys.executable, "train.py", *common, "--store_name", "eval", "--evaluate", "--resume",
                           str(store / "ddp" / "ckpt.best.pth.tar")],
                          cwd=REPO / "agedb-dir", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((store / "eval" / "results.json").read_text())
    assert evaluated["epoch"] == trained["epoch"]
    for group, metrics in evaluated["metrics"].items():
        for key, value in metrics.items():
            if value is None or key == "count":
                assert trained["metrics"][group][key] == value, (group, key)
            else:
                assert trained["metrics"][group][key] == pytest.approx(value, rel=1e-5), (group, key)
    assert trained["per_label"].keys() == evaluated["per_label"].keys()


def test_stsb_torchrun_run_with_ranksim_and_fds_matches_single_process_evaluation(tmp_path):
    synthetic = load_folder_module("stsb_synthetic_ddp", REPO / "sts-b-dir" / "data" / "make_synthetic_sts_b.py")
    data_dir = synthetic.write_synthetic_splits(tmp_path / "STS-B", seed=0)
    glove = synthetic.write_synthetic_glove(tmp_path / "glove.txt", 8, seed=0)
    store = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    common = ["--data_dir", str(data_dir), "--word_embs_file", str(glove), "--d_word", "8", "--d_hid", "16",
              "--store_root", str(store), "--no_progress"]
    # 120 training pairs in global batches of 16: 20 iterations cross an epoch boundary (FDS pass).
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), "train.py",
         *common, "--store_name", "ddp", "--val_interval", "10", "--max_vals", "2", "--lr", "1e-2", "--fds",
         "--regularization_weight", "3e-4", "--interpolation_lambda", "2"],
        cwd=REPO / "sts-b-dir", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p.name for p in store.iterdir()] == ["ddp"]
    trained = json.loads((store / "ddp" / "results.json").read_text())
    assert trained["metrics"]["all"]["count"] == 40
    log = (store / "ddp" / "training.log").read_text()
    assert "2 processes share each global batch of 16" in log and log.count("check 2/2 | iter 20") == 1
    assert log.count("health epoch") == 2 and [r["check"] for r in trained["health_history"]] == [1, 2]
    ckpt = torch.load(store / "ddp" / "ckpt.pth.tar", map_location="cpu", weights_only=True)
    assert "FDS.running_mean" in ckpt["state_dict"]  # the published plain layout (no module. prefix)
    # two epoch boundaries (iterations 8 and 16): two FDS passes, each over every train pair once
    assert ckpt["state_dict"]["FDS.num_samples_tracked"].sum() == 2 * 120

    proc = subprocess.run([sys.executable, "train.py", *common, "--store_name", "eval", "--evaluate",
                           "--eval_model", str(store / "ddp" / "ckpt.best.pth.tar")],
                          cwd=REPO / "sts-b-dir", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((store / "eval" / "results.json").read_text())
    for key in ("mse", "mae", "pearson", "spearman"):
        assert trained["metrics"]["all"][key] == pytest.approx(evaluated["metrics"]["all"][key], rel=1e-5), key


def test_public_gathered_ranksim_without_process_group_is_ranksim_on_label_vectors():
    from ranksim import GatheredRankSim as PublicGatheredRankSim

    gen = torch.Generator().manual_seed(3)
    features = torch.randn(24, 6, generator=gen, requires_grad=True)
    targets = torch.randint(0, 4, (24, 2), generator=gen).float()
    value = PublicGatheredRankSim(0.5, LAMBDA, torch.device("cpu"), seed=SEED, label_distance="l2")(features, targets)
    reference = 0.5 * batchwise_ranking_regularizer(
        features, targets, LAMBDA, generator=torch.Generator().manual_seed(GatheredRankSim.epoch_seed(SEED, 0)),
        label_distance="l2")
    assert torch.equal(value, reference)
    from ranksim import gather_global_batch

    gathered_features, gathered_targets = gather_global_batch(features, targets)  # no process group: as given
    assert gathered_features is features and gathered_targets is targets
