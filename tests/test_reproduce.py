"""reproduce.py and ranksim/harness/paper.py: the paper's rows, their commands, and the results table.

The table is checked on hand-written results.json files (exact cells) and on results.json files of
tiny REAL agedb-dir/train.py runs (Vanilla and RRT's two stages, 1 epoch, 16 px, ResNet-18).
"""
import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_reproduce_rows import PARSE

from ranksim.harness.cli import run_cli
from ranksim.harness.data.synthetic import make_synthetic_age_dataset
from ranksim.harness.paper import BENCHMARKS, COMPARATOR_GROUPS, PUBLISHED, ROWS, published

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}


def load_reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_cli", REPO / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPRODUCE = load_reproduce()


def reproduce(*args, check=True):
    """Run `python reproduce.py ARGS` in this process (exit status and output as from the shell)."""
    out, err = io.StringIO(), io.StringIO()
    returncode = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(REPRODUCE.main, [str(a) for a in args])
        except SystemExit as exc:
            returncode = exc.code
    proc = subprocess.CompletedProcess(args, returncode, out.getvalue(), err.getvalue())
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_command_line_entry_point():
    """The script itself: output on stdout, a user error as one line on stderr with exit status 2."""
    ok = subprocess.run([sys.executable, "reproduce.py", "list", "--dataset", "imdb_wiki"], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.count("python imdb-wiki-dir/train.py") == len(ROWS["imdb_wiki"])
    bad = subprocess.run([sys.executable, "reproduce.py", "list", "--dataset", "cifar"], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == ("error: --dataset cifar: unknown dataset; use one of agedb, imdb_wiki, sts-b, "
                          "agedb-extrapolation, agedb-interpolation, agedb-blindspot\n")


def age_metrics(mae, gm, counts=(10, 5, 3, 2)):
    """metrics dict as train.py writes it, from (all, many, medium, few) MAE and GM tuples."""
    groups = ("all", "many", "medium", "few")
    return {g: {"mse": m * m, "mae": m, "gmean": gmv, "count": c} for g, m, gmv, c in zip(groups, mae, gm, counts)}


def write_results(run_dir: Path, dataset: str, args: dict, metrics: dict, mtime=None) -> Path:
    run_dir.mkdir(parents=True)
    path = run_dir / "results.json"
    path.write_text(json.dumps({"dataset": dataset, "split": "test", "checkpoint": str(run_dir / "ckpt.best.pth.tar"),
                                "epoch": 1, "args": args, "metrics": metrics, "per_label": {}}))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


# ----------------------------------------------------------------------------- the rows as data

@pytest.mark.parametrize("dataset", list(BENCHMARKS))
def test_every_benchmark_has_the_paper_grid_with_and_without_ranksim(dataset):
    rows = [r for r in ROWS[dataset] if r.group not in COMPARATOR_GROUPS]  # tests/test_paper_comparators.py: the rest
    t = "INV" if dataset == "sts-b" else "SQINV"
    bases = ["Vanilla", "FDS", t, f"{t}+LDS", f"{t}+FDS", f"{t}+LDS+FDS", "Focal-R", "Focal-R+LDS", "Focal-R+FDS",
             "Focal-R+LDS+FDS", "RRT", "RRT+LDS", "RRT+FDS", "RRT+LDS+FDS"]
    assert [r.name for r in rows] == [n for b in bases for n in (b, f"{b}+RankSim")]
    assert len({r.key for r in rows}) == len(rows)
    # A run's recorded settings must identify exactly one row.
    assert len({r.identity for r in rows}) == len(rows)
    keys = {r.key: r for r in rows}
    for row in rows:
        if row.name.startswith("RRT"):
            stage1 = keys[row.stage1]
            assert stage1.stage1 is None and stage1.ranksim == row.ranksim
            assert ("--fds" in stage1.flags) == ("--fds" in row.flags)
            assert "--retrain_fc" in row.flags and "--pretrained" not in row.flags
        else:
            assert row.stage1 is None and "--retrain_fc" not in row.flags


def test_paper_hyperparameters_of_the_rows():
    age = {r.name: r for r in ROWS["agedb"]}
    assert age["SQINV+LDS+RankSim"].flags == (
        "--reweight", "sqrt_inv", "--lds", "--lds_kernel", "gaussian", "--lds_ks", "5", "--lds_sigma", "2",
        "--regularization_weight", "100", "--interpolation_lambda", "2", "--batch_size", "64", "--lr", "2.5e-4")
    assert age["Vanilla"].flags == ("--batch_size", "256", "--lr", "1e-3")
    assert age["Focal-R+FDS"].flags == ("--loss", "focal_l1", "--fds", "--fds_kernel", "gaussian", "--fds_ks", "5",
                                        "--fds_sigma", "2", "--batch_size", "256", "--lr", "1e-3", "--published_quirks")
    assert age["RRT+LDS"].stage1 == "vanilla" and age["RRT+LDS"].flags[:4] == ("--retrain_fc", "--reweight",
                                                                                 "sqrt_inv", "--lds")
    assert age["RRT+FDS+RankSim"].stage1 == "fds-ranksim"
    imdb = {r.name: r for r in ROWS["imdb_wiki"]}
    assert imdb["SQINV+RankSim"].flags == ("--reweight", "sqrt_inv", "--regularization_weight", "100",
                                           "--interpolation_lambda", "2", "--batch_size", "256", "--lr", "1e-3")
    stsb = {r.name: r for r in ROWS["sts-b"]}
    assert stsb["INV+LDS+RankSim"].flags == ("--reweight", "inverse", "--lds", "--lds_kernel", "gaussian", "--lds_ks",
                                             "5", "--lds_sigma", "2", "--regularization_weight", "3e-4",
                                             "--interpolation_lambda", "2", "--published_quirks")
    assert stsb["Focal-R"].flags == ("--loss", "focal_mse")
    assert stsb["RRT"].flags == ("--retrain_fc", "--reweight", "inverse")


def test_published_numbers_belong_to_existing_rows():
    for dataset, rows in PUBLISHED.items():
        names = {r.name for r in ROWS[dataset]}
        assert set(rows) <= names, set(rows) - names
    assert published("agedb", "Vanilla", "gmean", "few") == 10.75
    assert published("agedb", "SQINV+RankSim", "mae", "all") == 6.91
    assert published("agedb", "SQINV+FDS+RankSim", "mae", "few") == 9.68
    assert published("imdb_wiki", "SQINV+LDS+FDS+RankSim", "mae", "few") == 21.43
    assert published("sts-b", "RRT+RankSim", "pearson", "few") == 86.1
    assert published("sts-b", "Vanilla", "mse", "medium") == 1.520
    assert published("agedb", "Vanilla", "mse", "all") is None


# ----------------------------------------------------------------------------- commands

def test_list_prints_every_row_with_its_command():
    out = reproduce("list", "--dataset", "agedb").stdout
    assert out.count("python agedb-dir/train.py") == len(ROWS["agedb"])
    assert ("python agedb-dir/train.py --data_dir agedb-dir/data --store_root runs/agedb --store_name "
            "sqinv-lds --reweight sqrt_inv --lds --lds_kernel gaussian --lds_ks 5 --lds_sigma 2 "
            "--batch_size 256 --lr 1e-3\n") in out
    rrt = [line for line in out.splitlines() if "--store_name rrt-fds " in line]
    assert rrt == ["    ckpt=$(python reproduce.py ckpt --dataset agedb --runs runs/agedb --row fds) && "
                   "python agedb-dir/train.py --data_dir agedb-dir/data --store_root runs/agedb --store_name rrt-fds "
                   "--retrain_fc --reweight sqrt_inv --fds --fds_kernel gaussian --fds_ks 5 --fds_sigma 2 "
                   "--batch_size 256 --lr 1e-3 --pretrained \"$ckpt\""]
    stsb = reproduce("list", "--dataset", "sts-b").stdout
    assert "--store_name vanilla-ranksim --word_embs_file sts-b-dir/glove/glove.840B.300d.txt " \
           "--regularization_weight 3e-4 --interpolation_lambda 2\n" in stsb


def test_run_dry_run_adds_rrt_stage1_and_passes_extra_args(tmp_path):
    out = reproduce("run", "--dataset", "imdb_wiki", "--rows", "rrt-ranksim", "--runs", tmp_path / "r",
                    "--dry-run", "--", "--epoch", "1").stdout
    lines = [line for line in out.splitlines() if line.startswith("[dry-run]")]
    assert len(lines) == 2
    assert lines[0].startswith("[dry-run] vanilla-ranksim: python imdb-wiki-dir/train.py ")
    assert lines[0].endswith("--regularization_weight 100 --interpolation_lambda 2 --batch_size 256 --lr 1e-3 "
                             "--epoch 1")
    assert lines[1].startswith("[dry-run] rrt-ranksim: ")
    assert "--retrain_fc --reweight sqrt_inv" in lines[1] and "'<best checkpoint of row vanilla-ranksim>'" in lines[1]
    assert not (tmp_path / "r").exists()  # a dry run creates nothing


def test_write_script_and_job_array(tmp_path):
    script = tmp_path / "all.sh"
    reproduce("run", "--dataset", "agedb", "--rows", "all", "--write-script", script)
    text = script.read_text()
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid bash
    commands = [line for line in text.splitlines() if "train.py" in line]
    assert len(commands) == len(ROWS["agedb"])
    # every RRT stage 2 comes after all one-stage rows (their stage 1)
    first_rrt = next(i for i, c in enumerate(commands) if "--retrain_fc" in c)
    assert all("--retrain_fc" in c for c in commands[first_rrt:])
    assert first_rrt == len([r for r in ROWS["agedb"] if r.stage1 is None])

    jobs = tmp_path / "jobs.txt"
    out = reproduce("run", "--dataset", "sts-b", "--rows", "vanilla,rrt", "--job-array", jobs).stdout
    assert jobs.read_text().count("\n") == 1 and "--store_name vanilla " in jobs.read_text()
    assert Path(f"{jobs}.rrt").read_text().startswith("ckpt=$(python reproduce.py ckpt --dataset sts-b")
    wrapper = Path(f"{jobs}.slurm").read_text()
    assert "#SBATCH" in wrapper and 'sed -n "${SLURM_ARRAY_TASK_ID}p" "$1"' in wrapper
    assert f"sbatch --dependency=afterok:$jid --array=1-1 {jobs}.slurm {jobs}.rrt" in out
    assert subprocess.run(["bash", "-n", f"{jobs}.slurm"]).returncode == 0
    # never overwrites without --force
    proc = reproduce("run", "--dataset", "agedb", "--rows", "all", "--write-script", script, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "already exists" in proc.stderr
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (("list", "--dataset", "cifar"), "--dataset cifar: unknown dataset"),
    (("run", "--dataset", "agedb", "--rows", "vanila"), "--rows vanila: no such row for agedb"),
    (("table", "--dataset", "agedb", "--runs", "/nonexistent/runs"), "--runs /nonexistent/runs: no such directory"),
    (("ckpt", "--dataset", "agedb", "--runs", "{empty}", "--row", "vanilla"), "no finished run of row vanilla"),
    (("table", "--dataset", "agedb", "--runs", "{empty}", "--", "--epoch", "1"), "only for list, run and evaluate-released"),
])
def test_bad_input_gives_one_line_error(args, message, tmp_path):
    proc = reproduce(*[str(a).replace("{empty}", str(tmp_path)) for a in args], check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- tables (hand-written runs)

def test_table_from_hand_written_results(tmp_path):
    runs = tmp_path / "runs"
    paper = {"model": "resnet50", "img_size": 224, "epoch": 120, "optimizer": "adam", "loss": "l1"}
    # Vanilla twice: the newer one (7.80) is shown.
    write_results(runs / "old", "agedb", {**paper, "lr": 1e-3, "batch_size": 256},
                  age_metrics((9.0, 9.0, 9.0, 9.0), (1, 1, 1, 1)), mtime=1_000_000)
    write_results(runs / "v", "agedb", {**paper, "lr": 1e-3, "batch_size": 256},
                  age_metrics((7.80, 6.60, 9.60, 13.00), (5.00, 4.20, 7.00, 11.00)), mtime=2_000_000)
    # SQINV+RankSim with a deviating epoch count -> marked with * and footnoted.
    write_results(runs / "s", "agedb", {**paper, "reweight": "sqrt_inv", "regularization_weight": 100.0,
                                        "interpolation_lambda": 2.0, "lr": 2.5e-4, "batch_size": 64, "epoch": 1},
                  age_metrics((6.5, 6.0, 7.0, 8.0), (4.0, 3.5, 4.5, 5.0)))
    # Not a row (mse loss), another dataset, and an --evaluate run: none is counted.
    write_results(runs / "x", "agedb", {"loss": "mse"}, age_metrics((1, 1, 1, 1), (1, 1, 1, 1)))
    write_results(runs / "i", "imdb_wiki", {}, age_metrics((2, 2, 2, 2), (2, 2, 2, 2)))
    write_results(runs / "e", "agedb", {"evaluate": True}, age_metrics((3, 3, 3, 3), (3, 3, 3, 3)))

    proc = reproduce("table", "--dataset", "agedb", "--runs", runs, "--out", tmp_path / "t")
    md = proc.stdout
    lines = md.splitlines()
    vanilla = next(line for line in lines if line.startswith("| Vanilla |"))
    assert vanilla == ("| Vanilla | 7.80 (n=1) [7.77, +0.03] | 6.60 (n=1) [6.62, -0.02] | 9.60 (n=1) [9.55, +0.05] | "
                       "13.00 (n=1) [13.67, -0.67] | 5.00 (n=1) [5.05, -0.05] | 4.20 (n=1) [4.23, -0.03] | "
                       "7.00 (n=1) [7.01, -0.01] | 11.00 (n=1) [10.75, +0.25] |")
    sqinv_rs = next(line for line in lines if line.startswith("| SQINV+RankSim"))
    assert sqinv_rs == ("| SQINV+RankSim* | 6.50 (n=1) [6.91, -0.41] | 6.00 (n=1) | 7.00 (n=1) | 8.00 (n=1) | "
                        "4.00 (n=1) | 3.50 (n=1) | 4.50 (n=1) | 5.00 (n=1) |")
    # rows without a run: published numbers only, or nothing at all
    assert "| SQINV | [7.81] | [7.16] | [8.80] | [11.20] |  |  |  |  |" in lines
    assert "| Focal-R+LDS |  |  |  |  |  |  |  |  |" in lines
    assert "| SQINV+FDS+RankSim† | [7.02] |" in md
    assert "\\* SQINV+RankSim: run differs from the paper's settings: epoch=1 (paper: 120)" in md
    assert len([line for line in lines if line.startswith("| ") and "*" not in line[:3]]) == 1 + len(ROWS["agedb"])
    assert [line.split("*")[1] for line in lines if line.startswith("| *")] == [
        "Vanilla", "Cost-sensitive re-weighting", "Focal-R", "RRT (two stages)", *COMPARATOR_GROUPS]
    assert f"2 of {len(ROWS['agedb'])} rows have a run" in proc.stderr
    assert "seed 0 has several runs; the newest is shown" in proc.stderr, proc.stderr
    assert "are no row of the paper's table" in proc.stderr
    assert "--evaluate run" in proc.stderr
    assert (tmp_path / "t.md").read_text() == md
    tex = (tmp_path / "t.tex").read_text()
    assert r"\begin{tabular}{lcccccccc}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"Vanilla & 7.80 (n=1) {\scriptsize [7.77, +0.03]} & 6.60 (n=1) {\scriptsize [6.62, -0.02]}" in tex
    assert r"SQINV+RankSim$^*$ & 6.50 (n=1) {\scriptsize [6.91, -0.41]} & 6.00 (n=1) &" in tex
    assert all(line.count("&") == 8 for line in tex.splitlines() if line.endswith(r"\\") and "multicolumn" not in line)


def test_stsb_table_uses_mse_and_pearson_times_100(tmp_path):
    runs = tmp_path / "runs"
    metrics = {g: {"mse": v, "mae": 0.5, "gmean": 0.3, "count": 10, "pearson": p, "spearman": p}
               for g, v, p in (("all", 0.9, 0.75), ("many", 0.8, 0.7), ("medium", 1.4, 0.6), ("few", 1.0, None))}
    write_results(runs / "a", "sts-b", {"loss": "mse", "batch_size": 16, "lr": 2.5e-4, "optimizer": "adam"}, metrics)
    md = reproduce("table", "--dataset", "sts-b", "--runs", runs).stdout
    assert "| Method | MSE ↓ All | MSE ↓ Many | MSE ↓ Med. | MSE ↓ Few | Pearson ↑ All |" in md
    vanilla = next(line for line in md.splitlines() if line.startswith("| Vanilla |"))
    # few-shot Pearson undefined (None) -> our part empty, published value kept
    assert vanilla == ("| Vanilla | 0.900 (n=1) [0.974, -0.074] | 0.800 (n=1) [0.851, -0.051] | "
                       "1.400 (n=1) [1.520, -0.120] | 1.000 (n=1) [0.984, +0.016] | 75.0 (n=1) [74.2, +0.8] | "
                       "70.0 (n=1) [72.0, -2.0] | 60.0 (n=1) [62.7, -2.7] | [75.2] |")


def test_corrupt_results_json_is_a_one_line_error(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text("{not json")
    proc = reproduce("table", "--dataset", "agedb", "--runs", tmp_path, check=False)
    assert proc.returncode == 2 and "not a readable results.json" in proc.stderr and proc.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- tiny real runs

@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """`reproduce.py run` of RRT on tiny synthetic data: trains Vanilla (stage 1), then RRT's stage 2."""
    data = tmp_path_factory.mktemp("data")
    make_synthetic_age_dataset(data, n_train=48, n_val=16, n_test=16, img_size=16, seed=0)
    runs = tmp_path_factory.mktemp("runs")
    tiny = ["--epoch", "1", "--img_size", "16", "--model", "resnet18", "--workers", "0", "--batch_size", "16"]
    proc = reproduce("run", "--dataset", "agedb", "--rows", "rrt", "--runs", runs, "--data_dir", data, "--", *tiny)
    return data, runs, tiny, proc


def test_run_trains_stage1_then_rrt_from_its_best_checkpoint(real_runs):
    data, runs, tiny, proc = real_runs
    assert re.search(r"\[run\] vanilla: .*agedb-dir/train.py .*--store_name vanilla --batch_size 256 --lr 1e-3 --epoch 1", proc.stdout)
    stage2 = json.loads((runs / "rrt" / "results.json").read_text())
    assert stage2["args"]["retrain_fc"] is True and stage2["args"]["reweight"] == "sqrt_inv"
    assert stage2["args"]["seed"] == 0  # results.json records the seed (train.py's default here)
    assert Path(stage2["args"]["pretrained"]).resolve() == (runs / "vanilla" / "ckpt.best.pth.tar").resolve()
    # ckpt subcommand finds the same file
    ckpt = reproduce("ckpt", "--dataset", "agedb", "--runs", runs, "--row", "vanilla").stdout.strip()
    assert Path(ckpt).resolve() == (runs / "vanilla" / "ckpt.best.pth.tar").resolve()
    # running again skips both finished rows, trains nothing
    again = reproduce("run", "--dataset", "agedb", "--rows", "rrt", "--runs", runs, "--data_dir", data, "--", *tiny)
    assert again.stdout.count("[skip]") == 2 and "[run]" not in again.stdout


def test_table_of_real_runs_shows_their_numbers(real_runs):
    _, runs, _, _ = real_runs
    md = reproduce("table", "--dataset", "agedb", "--runs", runs).stdout
    for key, name in (("vanilla", "Vanilla"), ("rrt", "RRT")):
        metrics = json.loads((runs / key / "results.json").read_text())["metrics"]
        line = next(x for x in md.splitlines() if x.startswith(f"| {name}* |"))
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        expected = [metrics[g]["mae"] for g in ("all", "many", "medium", "few")] + \
                   [metrics[g]["gmean"] for g in ("all", "many", "medium", "few")]
        for cell, value in zip(cells, expected):
            if value is None:  # a shot group without test samples
                assert cell == "n/a" or cell.startswith("[")  # the run has no number there: n/a, not 0
            else:
                assert cell.split(" ")[0] == f"{value:.2f}"
    # the tiny runs differ from the paper's settings, and the table says so
    assert re.search(r"\\\* Vanilla: run differs from the paper's settings: .*epoch=1 \(paper: 120\)", md)
    assert "model=resnet18 (paper: resnet50)" in md and "img_size=16 (paper: 224)" in md


PARSER_DEFAULTS = PARSE  # code that builds each program's parser, run in its folder (test_reproduce_rows)


@pytest.mark.parametrize("dataset", list(BENCHMARKS))
def test_paper_defaults_are_the_train_programs_defaults(dataset):
    """The settings the table compares runs against (and the rows leave implicit) are train.py's defaults."""
    bench = BENCHMARKS[dataset]
    code = f"import json; {PARSER_DEFAULTS[bench.folder]}; print(json.dumps(vars(p.parse_args([]))))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO / bench.folder, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    defaults = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, value in bench.default_args.items():
        assert defaults[name] == value, (name, defaults[name], value)
    assert defaults["regularization_weight"] == 0 and defaults.get("reweight") == "none"
    assert defaults[bench.seed_arg] == bench.default_seed  # the seed a run without --seeds records
    for flag in ("--regularization_weight", "--interpolation_lambda", "--reweight", "--lds", "--fds", "--loss",
                 "--retrain_fc", "--pretrained", "--store_root", "--store_name", "--data_dir"):
        assert flag.lstrip("-") in defaults, flag
    if bench.path_flags:
        assert bench.path_flags[0].lstrip("-") in defaults
