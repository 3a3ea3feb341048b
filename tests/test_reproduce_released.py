"""reproduce.py released / evaluate-released: the 13 released checkpoints, their evaluate commands
(parsed by the real train.py parsers) and the PASS/FAIL check, on a checkpoint in the published
layout (module. prefix, no recorded flags) made here from a tiny model."""
import json
import shlex
from pathlib import Path

import pytest
import torch
from test_reproduce import REPRODUCE, reproduce
from test_reproduce_rows import as_flags, parse_with_train_parser

from ranksim.harness.checkpoint import make_checkpoint
from ranksim.harness.data.synthetic import make_synthetic_age_dataset
from ranksim.harness.models.resnet import build_model
from ranksim.harness.paper import BENCHMARKS, PUBLISHED_QUIRKS_FLAG, RELEASED, ROWS

FDS_NAMES = ("fds", "fds_kernel", "fds_ks", "fds_sigma")


def test_the_thirteen_released_checkpoints():
    assert len(RELEASED) == 13 and len({r.drive_id for r in RELEASED}) == 13
    assert [sum(r.dataset == d for r in RELEASED) for d in ("agedb", "imdb_wiki", "sts-b")] == [5, 4, 4]
    figures = {(r.dataset, r.row): REPRODUCE.released_figures(r) for r in RELEASED}
    assert figures[("agedb", "SQINV+RankSim")] == [("mae", "all", 6.91)]
    assert figures[("agedb", "Focal-R+FDS+RankSim")] == [("gmean", "medium", 4.84)]
    assert figures[("imdb_wiki", "SQINV+LDS+FDS+RankSim")] == [("mae", "all", 7.69), ("mae", "few", 21.43)]
    assert figures[("sts-b", "RRT+RankSim")] == [("mse", "all", 0.865), ("pearson", "all", 77.1),
                                                 ("mse", "few", 0.670), ("pearson", "few", 86.1)]
    out = reproduce("released").stdout
    assert out.count("drive id ") == 13 and "1NLCGNDA5vToe-MdOqokVYtUcJhGudIZe" in out
    assert ("python agedb-dir/train.py --evaluate --fds --fds_kernel gaussian --fds_ks 5 --fds_sigma 2 --resume FILE "
            "--data_dir agedb-dir/data --store_root runs/released") in out
    assert "python sts-b-dir/train.py --evaluate --eval_model FILE --data_dir sts-b-dir/glue_data/STS-B" in out


@pytest.mark.parametrize("dataset", list(BENCHMARKS))
def test_evaluate_commands_parse_with_the_real_train_parser(dataset):
    """The published form (age: --evaluate [model flags] --resume FILE; STS-B: [model flags] --evaluate
    --eval_model FILE) with exactly the row's FDS settings and none of its training-only flags."""
    bench = BENCHMARKS[dataset]
    rows = {r.name: r for r in ROWS[dataset]}
    entries = [e for e in RELEASED if e.dataset == dataset]
    commands = [REPRODUCE.evaluate_command(bench, rows[e.row], "ckpt.file", "DATA", "RUNS") for e in entries]
    for cmd in commands:
        assert cmd[:2] == ["python", f"{bench.folder}/train.py"]
        if bench.evaluate_style == "resume":
            assert cmd[2] == "--evaluate" and cmd[cmd.index("--resume") + 1] == "ckpt.file"
        else:
            i = cmd.index("--evaluate")
            assert cmd[i + 1: i + 3] == ["--eval_model", "ckpt.file"] and all(c.startswith("--fds") or c[0].isdigit()
                                                                            or c == "gaussian" for c in cmd[2:i])
    parsed = parse_with_train_parser(bench.folder, [cmd[2:] for cmd in commands])
    defaults = parse_with_train_parser(bench.folder, [[]])[0]
    for entry, args in zip(entries, parsed):
        row_flags = as_flags([f for f in rows[entry.row].flags if f != PUBLISHED_QUIRKS_FLAG])
        assert args["evaluate"] is True and args["data_dir"] == "DATA" and args["store_root"] == "RUNS"
        for name in FDS_NAMES:
            assert args[name] == row_flags.get(name, defaults[name]), (entry.row, name)
        for name in ("reweight", "lds", "loss", "regularization_weight", "retrain_fc"):
            assert args[name] == defaults[name], (entry.row, name)  # training-only flags are not passed
    assert any(as_flags(list(c)).get("fds") for c in commands) == any("FDS" in e.row for e in entries)


def test_check_released_tolerances():
    results = {"metrics": {"all": {"mae": 6.90, "mse": 0.866, "pearson": 0.7705}, "few": {"mae": None}}}
    lines, ok = REPRODUCE.check_released(results, [("mae", "all", 6.91), ("mse", "all", 0.865),
                                                   ("pearson", "all", 77.1)])
    assert ok and [x.endswith("PASS") for x in lines] == [True] * 3
    for figure in (("mae", "all", 6.92), ("mse", "all", 0.8685), ("pearson", "all", 77.2), ("mae", "few", 9.68)):
        lines, ok = REPRODUCE.check_released(results, [figure])
        assert not ok and lines[0].endswith("FAIL"), figure
    assert REPRODUCE.check_released(results, [("mae", "few", 9.68)])[0][0].startswith("MAE few: ours missing")


def test_evaluate_released_on_a_checkpoint_in_the_published_layout(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_synthetic_age_dataset(data, n_train=24, n_val=8, n_test=12, img_size=16, seed=3)
    torch.manual_seed(0)
    model = build_model("resnet18")
    checkpoint = make_checkpoint(model, None, epoch=90, best_loss=7.0, arch="resnet18")  # module.-prefixed keys
    assert next(iter(checkpoint["state_dict"])).startswith("module.") and "args" not in checkpoint
    ckpt = tmp_path / "released.pth.tar"
    torch.save(checkpoint, ckpt)
    runs = tmp_path / "runs"
    tiny = ["--", "--model", "resnet18", "--img_size", "16", "--workers", "0"]

    def evaluate(figures):
        monkeypatch.setattr(REPRODUCE, "released_figures", lambda entry: figures)
        return reproduce("evaluate-released", "--dataset", "agedb", "--row", "sqinv-ranksim", "--checkpoint", ckpt,
                         "--data_dir", data, "--runs", runs, *tiny, check=False)

    first = evaluate([("mae", "all", 1000.0)])
    assert first.returncode == 2 and "FAIL" in first.stdout and "beyond the tolerance" in first.stderr
    assert first.stdout.startswith("[evaluate] SQINV+RankSim: ")
    command = shlex.split(first.stdout.splitlines()[0].split(": ", 1)[1])
    assert command[2:5] == ["--evaluate", "--resume", str(ckpt)]
    (results_path,) = list(runs.rglob("results.json"))
    ours = json.loads(results_path.read_text())["metrics"]["all"]["mae"]
    line = next(x for x in first.stdout.splitlines() if x.strip().startswith("MAE all:"))
    assert f"ours {ours:.4f}" in line and "published 1000.00" in line

    passed = evaluate([("mae", "all", round(ours + 0.006, 4))])
    assert passed.returncode == 0 and passed.stdout.rstrip().endswith("PASS"), passed.stdout + passed.stderr
    assert len(list(runs.rglob("results.json"))) == 2  # a new run directory; the first one kept


def test_evaluate_released_refuses_a_row_without_a_released_checkpoint(tmp_path):
    proc = reproduce("evaluate-released", "--dataset", "agedb", "--row", "vanilla", "--checkpoint", tmp_path / "x",
                     check=False)
    assert proc.returncode == 2 and "no released checkpoint of agedb row Vanilla" in proc.stderr
    assert "sqinv-ranksim" in proc.stderr and proc.stderr.count("\n") == 1
    proc = reproduce("evaluate-released", "--dataset", "agedb", "--row", "sqinv-ranksim", "--checkpoint",
                     tmp_path / "missing.pth.tar", check=False)
    assert proc.returncode == 2 and "missing.pth.tar: no such file" in proc.stderr
    assert not Path(tmp_path / "runs").exists()
