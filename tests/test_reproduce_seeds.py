"""reproduce.py over several seeds: run --seeds, the settings check before skipping a row, the
seed-aggregated table (mean ± sample std, n, the 2-standard-error mark) and the paired comparison,
on hand-written results.json files checked against numpy/scipy."""
import math
import re
from pathlib import Path

import numpy as np
from scipy import stats
from test_reproduce import age_metrics, reproduce, write_results

from ranksim.harness.paper import ROWS

PAPER_AGE = {"model": "resnet50", "img_size": 224, "epoch": 120, "optimizer": "adam", "loss": "l1"}
VANILLA = {**PAPER_AGE, "lr": 1e-3, "batch_size": 256}
RANKSIM = {**PAPER_AGE, "lr": 2.5e-4, "batch_size": 64, "regularization_weight": 100.0, "interpolation_lambda": 2.0}
GROUPS = ("all", "many", "medium", "few")

# MAE per seed (all, many, medium, few); GM = MAE - 2.
VANILLA_MAE = {0: (7.80, 6.50, 9.50, 13.0), 1: (7.90, 6.70, 9.70, 13.9), 2: (7.85, 6.60, 9.40, 14.4)}
RANKSIM_MAE = {0: (7.60, 6.45, 9.00, 12.1), 1: (7.70, 6.60, 9.35, 12.5), 2: (7.62, 6.52, 9.10, 14.6)}


def write_seed_runs(runs: Path, key: str, args: dict, maes: dict, start_mtime: int = 2_000_000) -> None:
    for i, (seed, mae) in enumerate(maes.items()):
        write_results(runs / f"{key}-seed{seed}", "agedb", {**args, "seed": seed},
                      age_metrics(mae, tuple(m - 2 for m in mae)), mtime=start_mtime + i)


def expected_cell(values, paper, decimals=2):
    """The cell text computed here from numpy: mean ± std (n) [paper, diff], ‡ outside 2 standard errors."""
    values = np.asarray(values)
    mean, std, n = values.mean(), values.std(ddof=1), len(values)
    text = f"{mean:.{decimals}f} ± {std:.{decimals}f} (n={n}) [{paper:.{decimals}f}, {mean - paper:+.{decimals}f}]"
    return text + ("‡" if abs(mean - paper) > 2 * std / math.sqrt(n) else "")


def cells_of(md: str, name: str):
    line = next(x for x in md.splitlines() if x.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")][1:]


def test_table_aggregates_seeds_with_mean_std_n_and_the_two_se_mark(tmp_path):
    runs = tmp_path / "runs"
    write_seed_runs(runs, "vanilla", VANILLA, VANILLA_MAE)
    # An older smoke run of Vanilla (1 epoch): other settings than the newest run, so left out.
    write_results(runs / "vanilla-smoke", "agedb", {**VANILLA, "epoch": 1, "seed": 0},
                  age_metrics((50, 50, 50, 50), (40, 40, 40, 40)), mtime=1_000_000)
    proc = reproduce("table", "--dataset", "agedb", "--runs", runs)
    cells = cells_of(proc.stdout, "Vanilla")
    paper_mae, paper_gm = (7.77, 6.62, 9.55, 13.67), (5.05, 4.23, 7.01, 10.75)
    expected = [expected_cell([VANILLA_MAE[s][g] for s in VANILLA_MAE], paper_mae[g]) for g in range(4)] + \
               [expected_cell([VANILLA_MAE[s][g] - 2 for s in VANILLA_MAE], paper_gm[g]) for g in range(4)]
    assert cells == expected
    # The cases the data were chosen for: all-shot MAE mean 7.85, std 0.05: 7.77 lies 2.77 SE away -> marked;
    # many-shot 6.60 ± 0.10 vs 6.62: 0.35 SE -> not marked.
    assert cells[0] == "7.85 ± 0.05 (n=3) [7.77, +0.08]‡" and cells[1] == "6.60 ± 0.10 (n=3) [6.62, -0.02]"
    assert "vanilla-smoke/results.json left out, its settings differ from the newest run's: epoch=1 (newest run: 120)" in proc.stderr
    assert "| Vanilla* |" not in proc.stdout  # the aggregated runs are at the paper's settings

    per_seed = reproduce("table", "--dataset", "agedb", "--runs", runs, "--per-seed").stdout
    for seed, mae in VANILLA_MAE.items():
        assert cells_of(per_seed, f"Vanilla (seed {seed})")[0] == f"{mae[0]:.2f} (n=1) [7.77, {mae[0] - 7.77:+.2f}]"
    assert "Vanilla (seed 0)" in per_seed and "| Vanilla |" not in per_seed

    tex = reproduce("table", "--dataset", "agedb", "--runs", runs, "--latex").stdout
    assert r"Vanilla & 7.85 $\pm$ 0.05 (n=3) {\scriptsize [7.77, +0.08]}$^\ddagger$ & " \
           r"6.60 $\pm$ 0.10 (n=3) {\scriptsize [6.62, -0.02]} &" in tex


def test_a_single_seed_never_gets_the_two_se_mark(tmp_path):
    runs = tmp_path / "runs"
    write_seed_runs(runs, "vanilla", VANILLA, {0: (9.0, 9.0, 9.0, 9.0)})
    cells = cells_of(reproduce("table", "--dataset", "agedb", "--runs", runs).stdout, "Vanilla")
    assert cells[0] == "9.00 (n=1) [7.77, +1.23]"


def test_compare_gives_the_paired_difference_with_a_t_interval(tmp_path):
    runs = tmp_path / "runs"
    write_seed_runs(runs, "vanilla", VANILLA, {**VANILLA_MAE, 3: (1.0, 1.0, 1.0, 1.0)})  # seed 3: Vanilla only
    write_seed_runs(runs, "vanilla-ranksim", RANKSIM, RANKSIM_MAE)
    out = reproduce("compare", "--dataset", "agedb", "--runs", runs, "--rows", "vanilla-ranksim,vanilla").stdout
    assert "Vanilla+RankSim − Vanilla, paired over seeds 0, 1, 2 (n=3)" in out
    line = next(x for x in out.splitlines() if x.startswith("| MAE ↓ |"))
    cells = [c.strip() for c in line.strip().strip("|").split("|")][1:]
    for g, cell in enumerate(cells):
        d = np.array([RANKSIM_MAE[s][g] - VANILLA_MAE[s][g] for s in (0, 1, 2)])
        half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
        low, high = d.mean() - half, d.mean() + half
        expected = f"{d.mean():+.2f} [{low:+.2f}, {high:+.2f}] (95% CI, n=3)" + (" ✓" if high < 0 or low > 0 else "")
        assert cell == expected, (GROUPS[g], cell, expected)
    # all-shot: differences -0.20, -0.20, -0.23 -> interval below 0; few-shot: -0.9, -1.4, +0.2 -> contains 0.
    assert cells[0].endswith("✓") and not cells[3].endswith("✓")


def test_compare_without_common_seeds_is_a_one_line_error(tmp_path):
    runs = tmp_path / "runs"
    write_seed_runs(runs, "vanilla", VANILLA, {0: VANILLA_MAE[0]})
    proc = reproduce("compare", "--dataset", "agedb", "--runs", runs, "--rows", "vanilla-ranksim,vanilla", check=False)
    assert proc.returncode == 2 and "no seed in common" in proc.stderr and proc.stderr.count("\n") == 1


def test_run_with_seeds_gives_one_command_per_row_and_seed(tmp_path):
    out = reproduce("run", "--dataset", "agedb", "--rows", "rrt", "--runs", tmp_path / "r", "--seeds", "0,1,2",
                    "--dry-run").stdout
    lines = [x for x in out.splitlines() if x.startswith("[dry-run]")]
    assert [x.split(":")[0] for x in lines] == [f"[dry-run] {k}-seed{s}" for k in ("vanilla", "rrt") for s in (0, 1, 2)]
    for line, seed in zip(lines, (0, 1, 2, 0, 1, 2)):
        assert f"--seed {seed}" in line and re.search(rf"--store_name \S+-seed{seed} ", line)
    jobs = tmp_path / "jobs.txt"
    reproduce("run", "--dataset", "sts-b", "--rows", "vanilla,rrt", "--seeds", "3,4", "--job-array", jobs)
    stage1 = jobs.read_text().splitlines()
    assert len(stage1) == 2 and "--store_name vanilla-seed3 " in stage1[0] and stage1[1].endswith("--seed 4")
    stage2 = Path(f"{jobs}.rrt").read_text().splitlines()
    assert len(stage2) == 2
    assert stage2[1].startswith("ckpt=$(python reproduce.py ckpt --dataset sts-b --runs ") and \
        "--row vanilla --seed 4) && " in stage2[1]
    script = tmp_path / "all.sh"
    reproduce("run", "--dataset", "agedb", "--rows", "all", "--seeds", "0,1", "--write-script", script)
    assert len([x for x in script.read_text().splitlines() if "train.py" in x]) == 2 * len(ROWS["agedb"])


def test_run_skips_only_a_finished_run_with_the_commands_settings(tmp_path):
    runs = tmp_path / "runs"
    # A smoke run (1 epoch) of Vanilla: not the row's command -> said, and the row runs.
    write_results(runs / "vanilla", "agedb", {**VANILLA, "epoch": 1, "seed": 0}, age_metrics((1,) * 4, (1,) * 4))
    out = reproduce("run", "--dataset", "agedb", "--rows", "vanilla", "--runs", runs, "--dry-run").stdout
    assert "[differs] vanilla: the finished run vanilla" not in out  # paths are shown in full or repo-relative
    assert re.search(r"\[differs\] vanilla: the finished run \S+: epoch=1 \(command: 120\); running", out)
    assert "[dry-run] vanilla: " in out and "[skip]" not in out
    # ... but with the same flags after -- it is the command: skipped.
    out = reproduce("run", "--dataset", "agedb", "--rows", "vanilla", "--runs", runs, "--dry-run", "--",
                    "--epoch", "1").stdout
    assert out.startswith("[skip] vanilla: finished run at ")
    # A run with a switch the command does not have, and one of another seed: neither counts.
    write_results(runs / "vanilla-cl", "agedb", {**VANILLA, "seed": 0, "channels_last": True},
                  age_metrics((1,) * 4, (1,) * 4))
    write_results(runs / "vanilla-seed5", "agedb", {**VANILLA, "seed": 5}, age_metrics((1,) * 4, (1,) * 4))
    out = reproduce("run", "--dataset", "agedb", "--rows", "vanilla", "--runs", runs, "--dry-run").stdout
    assert "[skip]" not in out and "[dry-run] vanilla: " in out
    out = reproduce("run", "--dataset", "agedb", "--rows", "vanilla", "--runs", runs, "--dry-run",
                    "--seeds", "5").stdout
    assert out.startswith("[skip] vanilla-seed5: finished run at ")
    # A finished run at exactly the row's settings (default seed) is skipped.
    write_results(runs / "vanilla-full", "agedb", {**VANILLA, "seed": 0}, age_metrics((1,) * 4, (1,) * 4))
    out = reproduce("run", "--dataset", "agedb", "--rows", "vanilla", "--runs", runs, "--dry-run").stdout
    assert out.startswith("[skip] vanilla: finished run at ") and "vanilla-full" in out


def test_bad_seeds_are_one_line_errors(tmp_path):
    for spec in ("0,x", "1,1"):
        proc = reproduce("run", "--dataset", "agedb", "--rows", "vanilla", "--runs", tmp_path, "--seeds", spec,
                         "--dry-run", check=False)
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: --seeds {spec}: ") and \
            proc.stderr.count("\n") == 1


def test_help_states_the_defaults():
    for command, expected in (("run", ("default: runs/<dataset>", "default: one run with train.py's default seed",
                                       "default: the benchmark's data folder")),
                              ("table", ("default: all", "Markdown on stdout")),
                              ("ckpt", ("default: the newest run of any seed",)),
                              ("evaluate-released", ("default: runs/released",))):
        text = " ".join(reproduce(command, "-h").stdout.split())
        for phrase in expected:
            assert phrase in text, (command, phrase)
