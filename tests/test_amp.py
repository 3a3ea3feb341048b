"""Mixed precision (--amp) and --channels_last on CPU (autocast bf16): what stays float32, the flags'
errors, and a short agedb-dir training run with RankSim + FDS that resumes."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from folder_modules import age_program

from ranksim.harness.cli import UserError
from ranksim.harness.data.synthetic import make_synthetic_age_dataset
from ranksim.harness.loop import StepOptions, keep_float32, make_step_options
from ranksim.regularizer import batchwise_ranking_regularizer

AGEDB_DEFAULTS = age_program().DEFAULTS
main = age_program().main  # agedb-dir/train.py in this process

REPO = Path(__file__).resolve().parents[1]


def test_head_kept_in_float32_under_autocast():
    torch.manual_seed(0)
    head = nn.Linear(32, 1)
    with torch.no_grad():
        head.bias.fill_(50.0)  # an age: bf16 spaces representable values 0.25 apart here
    x = torch.randn(5, 32)
    expected = x @ head.weight.T + head.bias
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = head(x.bfloat16())
        keep_float32(head)
        kept = head(x.bfloat16())
    assert plain.dtype == torch.bfloat16 and kept.dtype == torch.float32
    # Only the input's rounding to bf16 remains (the model's features are bf16 under autocast).
    assert torch.allclose(kept, x.bfloat16().float() @ head.weight.T + head.bias, atol=1e-5)
    assert (plain.float() - expected).abs().max() > 0.01  # a bf16 head would round the prediction
    assert set(head.state_dict()) == {"weight", "bias"}  # keys unchanged


def test_ranksim_under_autocast_is_the_float32_regularizer():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(16, 64, generator=g).bfloat16().requires_grad_(True)
    labels = torch.tensor([float(v) for v in [3, 7, 7, 12, 20, 20, 20, 33, 41, 41, 50, 58, 60, 61, 70, 90]])
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = batchwise_ranking_regularizer(feats, labels.reshape(-1, 1), 2.0)  # train.py's call
    value.backward()
    ref_feats = feats.detach().float().requires_grad_(True)
    torch.manual_seed(5)
    reference = batchwise_ranking_regularizer(ref_feats, labels, 2.0)
    reference.backward()
    assert value.dtype == torch.float32 and torch.allclose(value, reference, rtol=1e-6)
    assert torch.allclose(feats.grad.float(), ref_feats.grad, rtol=1e-2, atol=1e-3)


def scaler_step_grads(options, gamma_passed, device):
    """One step's gradients (the features' and the first layer's) of L1 + 100 * RankSim through the
    programs' StepOptions: backward (scaled when there is a GradScaler), then unscale. The features'
    gradient is divided by the scale by hand (unscale only touches parameters)."""
    torch.manual_seed(0)
    body = nn.Linear(6, 32).to(device)
    head = nn.Linear(32, 1).to(device)
    optimizer = torch.optim.SGD(list(body.parameters()) + list(head.parameters()), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=gen).to(device)
    y = torch.randint(20, 40, (40, 1), generator=gen).float().to(device)  # repeated labels: tie reduction
    features = body(x)
    features.retain_grad()
    torch.manual_seed(2)
    extra = {"gamma": 100.0} if gamma_passed else {}
    loss = torch.nn.functional.l1_loss(head(features), y) + 100.0 * batchwise_ranking_regularizer(
        features, y, 2.0, **extra)  # the programs' RankSim line
    options.backward(loss)
    options.unscale(optimizer)
    scale = options.scaler.get_scale() if options.scaler is not None else 1.0
    return features.grad / scale, body.weight.grad


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
])
def test_fp16_loss_scaling_gives_the_fp32_ranksim_gradient(device):
    device = torch.device(device)
    fp32 = make_step_options("", False, device)
    if device.type == "cuda":  # the programs' --amp fp16 options (autocast is not the point: no autocast here)
        scaled = make_step_options("fp16", False, device)
        scaled.amp_dtype = None
    else:  # --amp fp16 is refused on CPU, but its GradScaler runs there: the programs' options, by hand
        scaled = StepOptions(scaler=torch.amp.GradScaler("cpu"))
    assert scaled.scaler.get_scale() == 2.0 ** 16
    want_features, want_weight = scaler_step_grads(fp32, True, device)
    got_features, got_weight = scaler_step_grads(scaled, True, device)
    for got, want in ((got_features, want_features), (got_weight, want_weight)):
        assert ((got - want).norm() / want.norm()).item() < 1e-3
    # Without gamma= the scaled step's RankSim gradient is ~S times too small (the bug gamma= fixes).
    fp32_published, _ = scaler_step_grads(fp32, False, device)
    scaled_published, _ = scaler_step_grads(StepOptions(scaler=torch.amp.GradScaler(device.type)), False, device)
    assert ((scaled_published - fp32_published).norm() / fp32_published.norm()).item() > 0.1


def test_agedb_program_step_under_a_loss_scaler_moves_the_weights_as_fp32():
    # agedb-dir/train.py's own train_one_epoch (RankSim's line passes gamma=): one SGD step under a
    # GradScaler of scale 2^16 moves the weights as the fp32 step does.
    import copy

    from folder_modules import age_train_one_epoch

    from ranksim.harness.models.resnet import resnet18
    from ranksim.losses import weighted_l1_loss

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16, generator=gen)
    y = torch.tensor([3.0, 10.0, 10.0, 25.0, 40.0, 41.0, 60.0, 90.0]).reshape(-1, 1)
    w = torch.ones(8, 1)
    torch.manual_seed(0)
    start = resnet18(return_encoding=True)

    def update(options, flags):
        model = copy.deepcopy(start)
        torch.manual_seed(1)  # the same tie draw in every run
        age_train_one_epoch(model, [(x, y, w)], torch.optim.SGD(model.parameters(), lr=0.01), weighted_l1_loss,
                            flags=flags, options=options)
        return model.conv1.weight.detach() - start.conv1.weight.detach()

    ranksim = ["--regularization_weight", "100", "--interpolation_lambda", "2"]
    fp32 = update(StepOptions(), ranksim)
    scaled = update(StepOptions(scaler=torch.amp.GradScaler("cpu")), ranksim)
    # Without gamma= in the program's line the two differ by 65 % (RankSim's part of the scaled step vanishes).
    assert ((scaled - fp32).norm() / fp32.norm()).item() < 1e-3


def test_amp_flag_errors():
    with pytest.raises(UserError, match=r"^--amp fp16: .*CUDA GPU; on CPU use --amp bf16"):
        make_step_options("fp16", False, torch.device("cpu"))
    options = make_step_options("bf16", True, torch.device("cpu"))
    assert options.amp_dtype == torch.bfloat16 and options.scaler is None and options.channels_last
    assert make_step_options("", False, torch.device("cpu")).amp_dtype is None


def test_bf16_channels_last_run_with_ranksim_and_fds_resumes(tmp_path):
    data = tmp_path / "data"
    make_synthetic_age_dataset(data, n_train=24, n_val=8, n_test=8, img_size=16, seed=0)
    store = tmp_path / "runs"
    args = ["--data_dir", str(data), "--img_size", "16", "--model", "resnet18", "--batch_size", "8", "--workers",
            "0", "--store_root", str(store), "--store_name", "amp", "--amp", "bf16", "--channels_last", "--fds",
            "--regularization_weight", "100", "--interpolation_lambda", "2"]
    main(args + ["--epoch", "1"])
    first = json.loads((store / "amp" / "results.json").read_text())
    assert first["args"]["amp"] == "bf16" and first["metrics"]["all"]["count"] == 8
    assert all(first["metrics"]["all"][k] is not None for k in ("mse", "mae", "gmean"))
    log = (store / "amp" / "training.log").read_text()
    assert float(log.split("(ranksim ")[1].split(")")[0]) > 0

    # A finished run continues in a new directory (epoch 2), from its checkpoint.
    results = main(args + ["--epoch", "2", "--resume", str(store / "amp" / "ckpt.pth.tar")])
    assert results["args"]["resume"].endswith("amp/ckpt.pth.tar")
    ckpt = torch.load(store / "amp_2" / "ckpt.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and "scaler" not in ckpt  # bf16 needs no loss scaling
    assert ckpt["state_dict"]["module.FDS.num_samples_tracked"].sum() == 2 * 24
    assert all(v.dtype in (torch.float32, torch.int64) for v in ckpt["state_dict"].values())  # weights fp32


def test_gpu_bench_quick_runs_every_section():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--quick"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    regularizer = [r for r in rows if r[:2] == ["a", "regularizer"]]
    steps = [r for r in rows if r[:2] == ["b", "ResNet-50"]]
    loader = [r for r in rows if r[:2] == ["c", "loader"]]
    assert [r[2] for r in regularizer] == ["B=32", "B=64"] and all(r[-1].endswith("x") for r in regularizer)
    assert [r[4] for r in steps] == ["fp32", "fp32+ranksim", "bf16cl", "bf16cl+ranksim"]
    assert all(float(r[5]) > 0 and r[6] == "img/s" for r in steps)
    assert len(loader) == 2 and all(float(r[4]) > 0 for r in loader)
    ops = [r for r in rows if r[:4] == ["a", "target", "ops", "dispatched"]]  # counted on CPU: a real verdict
    assert len(ops) == 1 and ops[0][-1] in ("met", "MISSED") and int(ops[0][ops[0].index("ops", 4) - 1]) > 20
    assert [r[5] for r in rows if r[:2] == ["d", "STS-B"]] == ["vanilla", "ranksim"]
    verdicts = [r[-2:] for r in rows if r[1:2] == ["target"]]
    assert ["needs", "CUDA"] in verdicts  # GPU targets measured on a CPU say so instead of met / MISSED
    assert all(v[-1] in ("met", "MISSED") or v == ["needs", "CUDA"] for v in verdicts)
