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
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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
