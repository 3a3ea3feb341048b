"""--compile: the programs train through torch.compile, and their checkpoints are those of an eager run.

Inductor's code generation takes minutes on the 2-core test machine (bench/README.md gives the start-up
cost), so these tests compile with the 'eager' backend: the same TorchDynamo capture of the training forward
(the graphs, guards and graph breaks of a real --compile run), run by PyTorch's own kernels instead of
generated ones. bench/phases.py --compile runs the real thing.
"""
from pathlib import Path

import pytest
import torch
from folder_modules import age_program, load_folder_module

from ranksim.harness.data.synthetic import make_synthetic_age_dataset

REPO = Path(__file__).resolve().parents[1]
age = age_program()


@pytest.fixture
def compile_without_codegen(monkeypatch):
    """torch.compile with backend='eager', counting the models it is given; dynamo's caches reset after."""
    compiled = []

    def eager_backend_compile(model, **kwargs):
        compiled.append(model)
        return real(model, backend="eager", **kwargs)
    real = torch.compile
    monkeypatch.setattr(torch, "compile", eager_backend_compile)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: these tiny models run faster on one thread
    torch._dynamo.utils.counters.clear()
    yield compiled
    torch.set_num_threads(threads)
    torch._dynamo.reset()


def test_age_compile_run_trains_like_the_eager_run(tmp_path, compile_without_codegen):
    data = make_synthetic_age_dataset(tmp_path / "data", n_train=16, n_val=8, n_test=8, img_size=8, seed=0).parent
    run = age.main
    common = ["--data_dir", str(data), "--img_size", "8", "--model", "resnet18", "--batch_size", "8", "--workers",
              "0", "--epoch", "1", "--store_root", str(tmp_path / "runs"), "--regularization_weight", "10"]
    compiled = run(common + ["--store_name", "compiled", "--compile"])
    assert len(compile_without_codegen) == 1 and torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    eager = run(common + ["--store_name", "eager"])
    assert len(compile_without_codegen) == 1  # without the flag nothing is compiled
    assert compiled["args"]["compile"] is True and eager["args"]["compile"] is False
    # The same checkpoint layout (no '_orig_mod.' prefix) and, after two Adam steps, the same weights.
    a = torch.load(tmp_path / "runs" / "compiled" / "ckpt.pth.tar", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "runs" / "eager" / "ckpt.pth.tar", weights_only=False)["state_dict"]
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    assert compiled["metrics"]["all"]["mae"] == pytest.approx(eager["metrics"]["all"]["mae"], rel=1e-4)


def test_stsb_compile_run_trains(tmp_path, compile_without_codegen):
    stsb_train = load_folder_module("stsb_train_compile", REPO / "sts-b-dir" / "train.py")
    synthetic = load_folder_module("stsb_synthetic_compile", REPO / "sts-b-dir" / "data" / "make_synthetic_sts_b.py")
    data_dir = synthetic.write_synthetic_splits(tmp_path / "STS-B", seed=0)
    glove = synthetic.write_synthetic_glove(tmp_path / "glove.txt", 8, seed=0)
    results = stsb_train.main(["--data_dir", str(data_dir), "--word_embs_file", str(glove), "--d_word", "8",
                               "--d_hid", "8", "--val_interval", "2", "--max_vals", "1", "--no_progress", "--compile",
                               "--regularization_weight", "3e-4", "--store_root", str(tmp_path / "runs")])
    assert len(compile_without_codegen) == 1 and torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert results["args"]["compile"] is True
    state = torch.load(next((tmp_path / "runs").glob("*/ckpt.pth.tar")), weights_only=False)["state_dict"]
    assert not [key for key in state if "_orig_mod" in key]
