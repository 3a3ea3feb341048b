"""The package: its public names (issue 2: `from ranksim import ...` must keep working), and the
method library installed on its own (issue 11): it imports and runs without the harness's packages,
the harness then says in one line what to install, and the wheel requires only torch, numpy, scipy."""
import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

import ranksim


def test_public_names_are_the_library_objects():
    from ranksim.fds import FDS
    from ranksim.ranking import TrueRanker, rank, rank_normalised
    from ranksim.regularizer import batchwise_ranking_regularizer

    assert ranksim.FDS is FDS
    assert ranksim.TrueRanker is TrueRanker
    assert ranksim.rank is rank
    assert ranksim.rank_normalised is rank_normalised
    assert ranksim.batchwise_ranking_regularizer is batchwise_ranking_regularizer


def test_top_level_regularizer_runs_on_a_batch():
    torch.manual_seed(0)
    features = torch.randn(8, 5, requires_grad=True)
    targets = torch.arange(8, dtype=torch.float32)
    loss = ranksim.batchwise_ranking_regularizer(features, targets, 2.0)
    loss.backward()
    assert loss.ndim == 0 and loss.item() > 0
    assert features.grad is not None and torch.isfinite(features.grad).all()


# ----------------------------------------------------------------------------- the library without the harness

REPO = Path(__file__).resolve().parent.parent
# Import names of the packages only the harness and the benchmark programs need (the `harness` extra).
HARNESS_ONLY = ("tqdm", "pandas", "PIL", "torchvision", "tensorboard", "matplotlib", "nltk")
# The same packages as pip names them.
HARNESS_EXTRA = {"tqdm", "pandas", "pillow", "torchvision", "tensorboard", "matplotlib", "nltk"}

# Run in a fresh interpreter, with the harness's packages hidden as if only `pip install ranksim` had run:
# every finder on sys.meta_path is wrapped so that it does not find them, so `import pandas` raises
# ModuleNotFoundError and importlib.util.find_spec("pandas") is None, as when pandas is not installed.
# (A finder that raised ImportError from find_spec would break torch itself: torch._dynamo probes
# optional packages with find_spec when `torch.compiler.disable` is first used.)
WITHOUT_HARNESS_PACKAGES = r'''
import importlib, json, sys

BLOCKED = set(sys.argv[1].split(","))


class WithoutHarnessPackages:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        find = getattr(self.finder, "find_spec", None)
        if name.split(".")[0] in BLOCKED or find is None:
            return None
        return find(name, path, target)

    def __getattr__(self, name):  # invalidate_caches, find_distributions, ...
        return getattr(self.finder, name)


sys.meta_path[:] = [WithoutHarnessPackages(finder) for finder in sys.meta_path]
report = {"modules": []}
import ranksim
for name in sys.argv[2].split(","):
    importlib.import_module(f"ranksim.{name}")
    report["modules"].append(name)
import torch
report["loss"] = float(ranksim.batchwise_ranking_regularizer(torch.randn(6, 4), torch.arange(6.0), 2.0))
report["loaded"] = sorted(name for name in sys.modules if name.startswith("ranksim.harness")
                          or name.split(".")[0] in BLOCKED)
try:
    import ranksim.harness  # noqa: F401
except ImportError as error:
    report["harness_error"] = str(error)
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def without_harness_packages():
    """What the library does in an interpreter without the harness's packages (one subprocess for the
    tests below: importing torch and scipy takes most of its few seconds)."""
    modules = sorted(path.stem for path in (REPO / "ranksim").glob("*.py") if path.stem != "__init__")
    proc = subprocess.run([sys.executable, "-c", WITHOUT_HARNESS_PACKAGES, ",".join(HARNESS_ONLY), ",".join(modules)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return modules, report


def test_library_imports_and_runs_without_the_harness_packages(without_harness_packages):
    modules, report = without_harness_packages
    assert "regularizer" in modules and "distributed" in modules  # the glob found the library's modules
    assert report["modules"] == modules
    assert report["loss"] > 0
    assert report["loaded"] == [], "the library imported harness code or packages: " + ", ".join(report["loaded"])


def test_harness_import_without_its_packages_fails_in_one_line_naming_the_extra(without_harness_packages):
    _, report = without_harness_packages
    message = report.get("harness_error")
    assert message is not None, "import ranksim.harness succeeded without its packages"
    assert "\n" not in message
    assert "pip install 'ranksim[harness]'" in message
    for package in ("tqdm", "pandas", "pillow", "torchvision"):
        assert package in message, message


def _imported_top_level_names(path: Path) -> set:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _is_standard_library(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    if spec is None:
        return False
    if spec.origin in (None, "built-in", "frozen"):
        return spec.origin is not None or name in sys.builtin_module_names
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    origin = Path(spec.origin).resolve()
    return stdlib in origin.parents and "site-packages" not in origin.parts


def test_library_modules_import_only_torch_numpy_scipy_and_the_standard_library():
    # Static, so it also covers imports inside functions, which the subprocess above never runs.
    found = {}
    for path in sorted((REPO / "ranksim").glob("*.py")):
        others = {name for name in _imported_top_level_names(path)
                  if name not in ("ranksim", "torch", "numpy", "scipy") and not _is_standard_library(name)}
        if others:
            found[path.name] = sorted(others)
    assert found == {}, found


# ----------------------------------------------------------------------------- the wheel's metadata


def _requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def test_wheel_requires_torch_numpy_scipy_and_puts_the_harness_packages_in_an_extra(tmp_path):
    # Build from a copy, so that the build leaves nothing (build/, *.egg-info) in the working tree.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "ranksim", source / "ranksim", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           str(source), "-w", str(tmp_path / "dist")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"})
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("ranksim-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
        metadata = archive.read(next(f for f in files if f.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    unconditional = {_requirement_name(r) for r in requires if ";" not in r}
    extras = {}
    for requirement in requires:
        if ";" in requirement:
            marker = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", requirement.split(";", 1)[1])
            assert marker, f"a requirement under a condition other than an extra: {requirement}"
            extras.setdefault(marker.group(1), set()).add(_requirement_name(requirement))
    assert unconditional == {"torch", "numpy", "scipy"}
    assert extras == {"harness": HARNESS_EXTRA}
    # The harness ships in the wheel (behind its extra); the benchmark folders and tests do not.
    assert "ranksim/harness/__init__.py" in files and "ranksim/regularizer.py" in files
    assert not [f for f in files if f.startswith(("tests/", "bench/", "agedb-dir/", "sts-b-dir/"))]
    # The long description (the README) tells a user of the wheel that the MIT licence grants no patent
    # rights under the application covering RankSim's loss.
    description = " ".join(metadata.split("\n\n", 1)[1].split())
    assert "US patent application 2023/0214651" in description
    assert "63/295,661" in description and "grants no patent rights" in description
