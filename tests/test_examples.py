"""The library examples (examples/) run end to end at tiny settings, and the README's "add RankSim
to your loop" block runs as written."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, unit", [("tabular_diabetes.py", "progression score"),
                                          ("two_d_labels.py", "Euclidean distance")])
def test_example_runs_and_prints_both_methods_per_group(script, unit):
    result = subprocess.run([sys.executable, str(REPO / "examples" / script), "--seeds", "0", "1", "--epochs", "2"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"MAE ({unit}" in out and "over 2 seed(s)" in out
    for group in ("all", "many", "medium", "few"):
        row = re.search(rf"^{group} \[(\d+)\]\s+(\S+) \+- \S+\s+(\S+) \+- \S+\s+(\d)/2 seeds$", out, flags=re.M)
        assert row, (group, out)
        assert float(row.group(2)) > 0 and float(row.group(3)) > 0


def test_tabular_split_is_imbalanced_as_documented():
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import tabular_diabetes
    finally:
        sys.path.remove(str(REPO / "examples"))
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
