"""The experiment harness: the plumbing the benchmark programs share, none of it research logic.

Command-line errors and shared flag checks (cli.py, flags.py), each program's command line
(age_flags.py, stsb_flags.py), checkpoint I/O (checkpoint.py), the run protocol and run directories
(run.py; STS-B's bookkeeping on top of it: stsb_run.py), the training-loop pieces (loop.py), torchrun
helpers (distributed.py), the comparator wiring (comparators.py), datasets, loaders, splits, downloads
and synthetic data (data/), the ResNet (models/) and the paper's rows (paper.py). The method library
(``ranksim``) never imports it.

It needs more than the library: ``pip install 'ranksim[harness]'`` (or ``pip install -r requirements.txt``).
"""
import importlib.util

# import name -> pip package, for the one-line message below (tensorboard is optional: run.py says so)
HARNESS_PACKAGES = (("tqdm", "tqdm"), ("pandas", "pandas"), ("PIL", "pillow"), ("torchvision", "torchvision"))


def require_harness_packages() -> None:
    """ImportError in one line naming the missing packages and the extra that installs them."""
    missing = [package for module, package in HARNESS_PACKAGES if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"ranksim.harness needs {', '.join(missing)}, which the method library alone does not "
                          "install; run `pip install 'ranksim[harness]'` (or `pip install -r requirements.txt`)")


require_harness_packages()
