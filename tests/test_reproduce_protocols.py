"""reproduce.py's tables of Puetz et al.'s AgeDB protocols (--dataset agedb-extrapolation | agedb-interpolation |
agedb-blindspot): the rows' training settings, commands, run matching by protocol, n/a for an empty region,
and the seed aggregation, on hand-written results.json files."""
import json

import numpy as np
import pytest
from folder_modules import age_program
from test_reproduce import age_metrics, reproduce, write_results

from ranksim.harness.age_flags import build_parser
from ranksim.harness.data.age_splits import PROTOCOLS
from ranksim.harness.paper import PROTOCOL_BENCHMARKS, PROTOCOL_ROWS

BASE = {"model": "resnet50", "img_size": 224, "epoch": 120, "optimizer": "adam", "loss": "l1"}
VANILLA = {**BASE, "lr": 1e-3, "batch_size": 256}
RANKSIM = {**BASE, "lr": 2.5e-4, "batch_size": 64, "regularization_weight": 100.0, "interpolation_lambda": 2.0}
# Blind-spot runs: (all, many, medium, few) MAE per seed; medium is empty (no age has 20..100 train rows).
BLIND_VANILLA = {0: (8.0, 7.0, None, 14.0), 1: (8.2, 7.1, None, 15.0), 2: (8.1, 7.2, None, 16.5)}
BLIND_RANKSIM = {0: (7.9, 7.0, None, 13.0), 1: (8.0, 7.0, None, 14.5), 2: (8.3, 7.3, None, 15.0)}


def test_protocol_tables_and_rows():
    assert list(PROTOCOL_BENCHMARKS) == [f"agedb-{p}" for p in PROTOCOLS]
    parser = build_parser(age_program().DEFAULTS)
    for name, rows in PROTOCOL_ROWS.items():
        protocol = PROTOCOL_BENCHMARKS[name].default_args["protocol"]
        assert [r.key for r in rows] == ["vanilla", "sqinv", "sqinv-lds", "fds", "focal", "vanilla-ranksim", "conr",
                                         "rrt", "rrt-ranksim"]
        for row in rows:
            args = parser.parse_args(list(row.flags))  # the real train.py parser takes every row's flags
            assert args.protocol == protocol and args.model == "resnet50", row.key
            # Puetz et al.'s settings: batch 64 at lr 2.5e-4 for RankSim, ConR and Focal-L1, else 256 at 1e-3;
            # RRT retrains the head for 30 epochs at lr 1e-3; end-to-end rows train 120 epochs.
            small = row.key in ("vanilla-ranksim", "conr", "focal", "rrt-ranksim")
            assert args.batch_size == (64 if small else 256), row.key
            assert args.lr == (1e-3 if row.key.startswith("rrt") or not small else 2.5e-4), row.key
            assert args.epoch == (30 if row.key.startswith("rrt") else 120), row.key
            assert (args.regularization_weight, args.interpolation_lambda) == \
                ((100.0, 2.0) if row.ranksim else (0.0, 1.0)), row.key
            if args.conr:
                assert (args.conr_omega, args.conr_beta, args.conr_tau, args.conr_e) == (1, 4, 0.2, 0.01)
        assert {r.key: r.stage1 for r in rows if r.stage1} == {"rrt": "vanilla", "rrt-ranksim": "vanilla-ranksim"}


def metrics_of(mae):
    metrics = age_metrics(tuple(np.nan if m is None else m for m in mae),
                          tuple(np.nan if m is None else m - 1 for m in mae), counts=(2700, 2350, 0, 350))
    metrics["medium"] = {"mse": None, "mae": None, "gmean": None, "count": 0}  # as train.py writes an empty region
    return metrics


def write_protocol_runs(runs, key, args, maes, protocol="blindspot", start=2_000_000):
    for i, (seed, mae) in enumerate(maes.items()):
        path = write_results(runs / f"{protocol}-{key}-seed{seed}", "agedb",
                             {**args, "seed": seed, "protocol": protocol}, metrics_of(mae), mtime=start + i)
        if seed == 0:  # train.py also names the protocol at the top level; older files only in args
            results = json.loads(path.read_text())
            path.write_text(json.dumps({**results, "protocol": protocol}))


def cells_of(md, name):
    line = next(x for x in md.splitlines() if x.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")][1:]


@pytest.fixture()
def runs(tmp_path):
    runs = tmp_path / "runs"
    write_protocol_runs(runs, "vanilla", VANILLA, BLIND_VANILLA)
    write_protocol_runs(runs, "vanilla-ranksim", RANKSIM, BLIND_RANKSIM)
    write_protocol_runs(runs, "vanilla", VANILLA, {0: (5.0, 5.0, 5.0, 5.0)}, protocol="extrapolation")
    write_results(runs / "published-vanilla", "agedb", {**VANILLA, "seed": 0, "protocol": None},
                  age_metrics((7.0, 6.0, 9.0, 13.0), (5.0, 4.0, 7.0, 10.0)))
    return runs


def test_table_keeps_each_protocol_apart_and_shows_an_empty_region_as_na(runs):
    md = reproduce("table", "--dataset", "agedb-blindspot", "--runs", runs).stdout
    cells = cells_of(md, "Vanilla")
    for g, group in enumerate(("all", "many")):
        values = np.array([BLIND_VANILLA[s][g] for s in range(3)])
        assert cells[g] == f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n=3)", group  # no published number
    assert cells[2] == "n/a" and cells[6] == "n/a"  # medium MAE and GM: an empty region, not 0
    few = np.array([BLIND_VANILLA[s][3] for s in range(3)])
    assert cells[3] == f"{few.mean():.2f} ± {few.std(ddof=1):.2f} (n=3)"
    assert cells_of(md, "FDS") == [""] * 8  # no run: empty, not n/a
    assert "Blind-Spot Isolation" in md and "paper's text was not available" in md
    extrapolation = reproduce("table", "--dataset", "agedb-extrapolation", "--runs", runs).stdout
    assert cells_of(extrapolation, "Vanilla")[0] == "5.00 (n=1)"
    published = reproduce("table", "--dataset", "agedb", "--runs", runs).stdout
    assert cells_of(published, "Vanilla")[0] == "7.00 (n=1) [7.77, -0.77]"  # protocol runs are not AgeDB-DIR rows


def test_compare_pairs_the_protocol_seeds(runs):
    out = reproduce("compare", "--dataset", "agedb-blindspot", "--runs", runs, "--rows", "vanilla-ranksim,vanilla").stdout
    assert "paired over seeds 0, 1, 2 (n=3)" in out
    diff = np.array([BLIND_RANKSIM[s][3] - BLIND_VANILLA[s][3] for s in range(3)])
    assert f"{diff.mean():+.2f}" in out.split("| MAE ↓ |")[1].split("|")[3]


def test_run_passes_the_protocol_and_skips_finished_seeds(runs):
    out = reproduce("run", "--dataset", "agedb-blindspot", "--runs", runs, "--rows", "vanilla", "--seeds", "0,1,3",
                    "--dry-run", "--data_dir", "data").stdout
    assert out.count("[skip]") == 2
    assert "[dry-run] vanilla-seed3: python agedb-dir/train.py --data_dir data --store_root" in out
    assert "--batch_size 256 --lr 1e-3 --protocol blindspot --seed 3" in out
    assert reproduce("run", "--dataset", "agedb-interpolation", "--runs", runs, "--rows", "vanilla", "--seeds", "0",
                     "--dry-run").stdout.count("[dry-run]") == 1
