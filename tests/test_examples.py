"""The library examples (examples/) run end to end at tiny settings, and the README's "add RankSim
to your loop" block runs as written."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def run_example(script, *args):
    result = subprocess.run([sys.executable, str(REPO / "examples" / script), *args], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout


def import_example(name):
    sys.path.insert(0, str(REPO / "examples"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(REPO / "examples"))


@pytest.mark.parametrize("script, unit", [("tabular_diabetes.py", "MAE, progression score"),
                                          ("two_d_labels.py", "Euclidean distance")])
def test_example_prints_both_methods_per_group_with_paired_intervals_and_health(script, unit):
    out = run_example(script, "--seeds", "0", "1", "--epochs", "2")
    assert f"Error ({unit}" in out and "over 2 seed(s)" in out
    number = r"[-+]?\d+\.\d+"
    for group in ("all", "many", "medium", "few"):
        row = re.search(rf"^{group} \[(\d+)\]\s+({number}) \+- {number}\s+({number}) \+- {number}\s+"
                        rf"({number}) \[{number}, {number}\] \(95% CI, n=2\): (lower|higher|within noise)$",
                        out, flags=re.M)
        assert row, (group, out)
        assert float(row.group(2)) > 0 and float(row.group(3)) > 0
    for method in ("vanilla", "RankSim"):
        line = re.search(rf"^  {method}.*mean cosine (\S+) \+- .*rank agreement (\S+) \+- .*grad ratio at init (.+)$",
                         out, flags=re.M)
        assert line, (method, out)
        assert -1 <= float(line.group(1)) <= 1 and -1 <= float(line.group(2)) <= 1
        assert (line.group(3).startswith("-")) == (method == "vanilla")  # no ratio without RankSim


def test_sweep_prints_one_row_per_gamma_with_vanilla_as_reference():
    out = run_example("tabular_diabetes.py", "--sweep", "--gammas", "0.01", "1", "--seeds", "0", "1", "--epochs", "1")
    rows = re.findall(r"^ *(vanilla|[0-9.e+-]+) +[0-9.]+ \+- ", out, flags=re.M)
    assert rows == ["vanilla", "0.01", "1"]
    assert "(reference)" in out and "(95% CI, n=2)" in out


def test_inputs_are_standardised_with_the_train_statistics():
    mlp = import_example("mlp")
    x_train = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])
    train, test = mlp.standardise(x_train, np.array([[3.0, 12.0]]))
    sd = np.sqrt(((x_train[:, 0] - 3) ** 2).mean())  # population sd of 1, 3, 5
    assert np.allclose(train[:, 0], [-2 / sd, 0, 2 / sd]) and np.allclose(train[:, 1], 0)  # a constant column stays 0
    assert np.allclose(test, [[0.0, 2.0]])  # shifted and scaled by the TRAIN mean / sd (constant column: sd 1)


def test_tabular_split_is_imbalanced_as_documented():
    tabular_diabetes = import_example("tabular_diabetes")
    x_train, y_train, x_test, y_test = tabular_diabetes.imbalanced_split()
    assert len(y_train) + len(y_test) < 442 and len(y_test) == 442 - int(0.75 * 442)
    assert x_train.shape[1] == 10
    # Subsampling with exp(-(y - 25) / 80): high targets are much rarer in train than in test.
    assert (y_train >= 200).mean() < 0.5 * (y_test >= 200).mean()


def test_readme_snippet_runs():
    text = (REPO / "README.md").read_text()
    marker = "<!-- the block below is executed by tests/test_examples.py -->"
    block = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", text, flags=re.S)
    assert block, "README: the snippet block is missing"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 13
    namespace = {}
    exec(compile(code, "README.md snippet", "exec"), namespace)
    assert namespace["loss"].ndim == 0 and bool(namespace["loss"].isfinite())
    assert namespace["head"].weight.grad is not None  # the step ran backward through both terms
