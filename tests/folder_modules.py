"""Import a file of a benchmark folder (agedb-dir/, imdb-wiki-dir/, sts-b-dir/, their data/ scripts,
bench/) in a test process, although those folders are not packages.

Usage in a test::

    from folder_modules import load_folder_module

    stsb_train = load_folder_module("stsb_train", ROOT / "sts-b-dir" / "train.py")

Every folder has files of the same plain names (datasets.py, loss.py, ranking.py, ...) and the
scripts import their siblings by those names (``from datasets import AgeDB``). So the module is
imported under the unique ``name`` given (never put in ``sys.modules``), with its own folder first on
``sys.path`` while it runs; sibling modules of those plain names that another test already imported
are set aside meanwhile and put back afterwards, and the ones this import loads never stay behind.
"""
import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]

# Plain module names the benchmark folders define more than once and import from each other.
SIBLINGS = ("datasets", "models", "resnet", "loss", "ranking")


def load_folder_module(name: str, path: Path) -> ModuleType:
    """Run the file at ``path`` as a new module called ``name`` and return it."""
    before = {sibling: sys.modules.pop(sibling) for sibling in SIBLINGS if sibling in sys.modules}
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
        for sibling in SIBLINGS:  # never leave ours behind, and give back any other folder's modules
            sys.modules.pop(sibling, None)
        sys.modules.update(before)
    return module


@functools.lru_cache(maxsize=None)
def age_program(folder: str = "agedb-dir") -> ModuleType:
    """The program ``<folder>/train.py`` (agedb-dir or imdb-wiki-dir), loaded once per test session, so
    that a test can call its ``main(argv)`` and monkeypatch its functions (e.g. ``train_one_epoch``)."""
    return load_folder_module(f"{folder.replace('-', '_')}_train", REPO / folder / "train.py")


def age_train_one_epoch(model, loader, optimizer, loss_fn, epoch: int = 0, flags=(), ctx=None, options=None,
                        run_dir=None):
    """One call of agedb-dir/train.py's ``train_one_epoch`` with what the program would pass for the
    command-line ``flags`` (e.g. ["--regularization_weight", "100"]): parsed args, a Run (in ``run_dir``, a
    new temporary folder by default), StepOptions (fp32 unless given), a GlobalBatch of ``ctx`` (one process
    by default) and no comparator. Returns its (mean loss, mean RankSim term)."""
    import tempfile

    from ranksim.harness.comparators import Comparator
    from ranksim.harness.distributed import DistContext, GlobalBatch
    from ranksim.harness.loop import StepOptions
    from ranksim.harness.run import Run

    program = age_program()
    ctx = ctx or DistContext()
    args = program.parse_args(["--print_freq", "1000", *flags], program.DEFAULTS)
    run = Run(run_dir or tempfile.mkdtemp(prefix="age_step_"), ctx)
    try:
        return program.train_one_epoch(model, loader, optimizer, loss_fn, epoch, args, run, options or StepOptions(),
                                       GlobalBatch(ctx, args.seed), Comparator())
    finally:
        run.logger.close()
