"""The Balanced MSE / ConR / Rank-N-Contrast rows of ranksim/harness/paper.py and their reproduce.py table cells."""
import json

import pytest
from folder_modules import age_program
from test_reproduce import age_metrics, reproduce, write_results

from ranksim.harness.age_flags import build_parser
from ranksim.harness.paper import BENCHMARKS, COMPARATOR_GROUPS, PUBLISHED, ROWS, published


@pytest.mark.parametrize("dataset", ["agedb", "imdb_wiki", "sts-b"])
def test_comparator_rows_are_runnable_and_identify_one_row_each(dataset):
    rows = ROWS[dataset]
    extra = [r for r in rows if r.group in COMPARATOR_GROUPS]
    names = {r.name for r in extra}
    assert {"BMC", "BNI", "GAI", "BMC (RRT)", "ConR", "ConR+RankSim"} <= names
    assert ("RnC" in names) == (dataset != "sts-b")  # Rank-N-Contrast: age benchmarks only
    assert len({r.identity for r in rows}) == len(rows) and len({r.key for r in rows}) == len(rows)
    keys = {r.key for r in rows}
    for row in extra:
        assert row.stage1 is None or row.stage1 in keys
        assert ("--regularization_weight" in row.flags) == row.ranksim
    if dataset != "sts-b":  # every age row parses with the age program's flags
        for row in extra:
            build_parser(age_program().DEFAULTS).parse_args(list(row.flags) + (["--pretrained", "x"] if row.stage1 else []))


def test_published_comparator_numbers():
    assert published("agedb", "SQINV+FDS+RankSim+ConR", "mae", "few") == 9.43
    assert published("agedb", "SQINV+LDS+FDS+RankSim+ConR", "mae", "few") == 9.21
    assert published("imdb_wiki", "BNI (RRT)", "balanced_mae", "all") == 12.650
    assert published("imdb_wiki", "Vanilla", "balanced_mae", "few") == 32.778
    # the balanced metric is never filed as MAE, and has its own column on IMDB-WIKI-DIR only
    assert published("imdb_wiki", "GAI (RRT)", "mae", "all") is None
    assert published("imdb_wiki", "Vanilla", "mae", "all") == 8.06
    assert BENCHMARKS["imdb_wiki"].metrics == ("mae", "gmean", "balanced_mae")
    assert all("balanced_mae" not in v for rows in (PUBLISHED["agedb"], PUBLISHED["sts-b"]) for v in rows.values())


def test_table_shows_the_balanced_metric_in_its_own_column(tmp_path):
    runs = tmp_path / "runs"
    args = {"bmse": "bni", "retrain_fc": True, "lr": 1e-4, "epoch": 10}
    path = write_results(runs / "bni", "imdb_wiki", args, age_metrics((8.0, 7.0, 12.0, 22.0), (4, 4, 6, 13)))
    results = json.loads(path.read_text())
    results["balanced_mae"] = {"all": 12.5, "many": 7.5, "medium": 12.75, "few": 28.0}
    path.write_text(json.dumps(results))
    reproduce("table", "--dataset", "imdb_wiki", "--runs", runs, "--out", tmp_path / "t")
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert "bMAE ↓ All" in lines[4]
    row = next(line for line in lines if line.startswith("| BNI (RRT)"))
    assert row.endswith("| 12.500 (n=1) [12.650, -0.150] | 7.500 (n=1) [7.647, -0.147] | 12.750 (n=1) [12.696, +0.054] | "
                        "28.000 (n=1) [28.077, -0.077] |")
    assert row.startswith("| BNI (RRT) | 8.00 (n=1) | 7.00 (n=1) | 12.00 (n=1) | 22.00 (n=1) |")
