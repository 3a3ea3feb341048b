"""Structure rules of the code base (issue 11), checked on every tracked .py file with ``ast``.

* No private names across modules: nothing does ``from X import _name``, ``X._name``,
  ``getattr(X, "_name")`` or ``monkeypatch.setattr(X, "_name", ...)`` on another project module (or on
  a name imported from one). What another module needs gets a public, documented name. Dunder names
  (``__version__``, ``__file__``) are public.
* agedb-dir/train.py and imdb-wiki-dir/train.py are one program: identical outside their marked
  dataset block, so a fix cannot reach one and miss the other.
* No module-level mutable state: no ``global`` statement, and no module-level name (a table, a
  registry, a cache) changed after it is defined, neither by top-level code at import nor by a
  function later. Each table is built once, complete.

A project module is ``ranksim`` (and anything under it), a relative import, or a module named like a
tracked file (the benchmark folders and scripts import their siblings by plain name: ``from datasets
import AgeDB``), or what ``load_folder_module`` returns in the tests.
"""
import ast
import re
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Set

REPO = Path(__file__).resolve().parent.parent

# Methods that change a list, dict or set in place.
MUTATING_METHODS = {"append", "extend", "insert", "update", "setdefault", "add", "pop", "popitem", "remove",
                    "discard", "clear", "sort", "reverse"}
# Calls that reach an attribute by its name: (function, index of the object argument).
NAMED_ATTRIBUTE_CALLS = {"getattr": 0, "setattr": 0, "delattr": 0, "hasattr": 0}


def tracked_python_files() -> List[str]:
    """The .py files git tracks; outside a git checkout (an unpacked archive), every .py file but those in
    hidden folders (.venv, .git) and build output."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "*.py"], cwd=REPO, capture_output=True, text=True,
                                check=True)
        return sorted(path for path in listed.stdout.split("\0") if path)
    except (OSError, subprocess.CalledProcessError):
        return sorted(str(path.relative_to(REPO)) for path in REPO.rglob("*.py")
                      if not any(part.startswith(".") or part == "build" for part in path.relative_to(REPO).parts))


def project_module_names(files: List[str]) -> Set[str]:
    """Top-level names under which project code is imported."""
    return {"ranksim"} | {Path(path).stem for path in files if Path(path).stem != "__init__"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_project(module: str, level: int, project: Set[str]) -> bool:
    return level > 0 or (module or "").split(".")[0] in project


def _project_bindings(tree: ast.Module, project: Set[str]) -> Set[str]:
    """Names bound in this file to a project module or to something imported from one."""
    bound: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in project:
                    bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and _is_project(node.module, node.level, project):
            bound.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            function = node.value.func
            if isinstance(function, ast.Name) and function.id == "load_folder_module":
                bound.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return bound


def _chain_root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node


def private_access(source: str, project: Set[str]) -> Iterator[str]:
    """Uses of another project module's private names in ``source``: '<line>: <what>'."""
    tree = ast.parse(source)
    bound = _project_bindings(tree, project)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _is_project(node.module, node.level, project):
            for alias in node.names:
                if is_private(alias.name):
                    yield f"{node.lineno}: from {'.' * node.level}{node.module or ''} import {alias.name}"
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            root = _chain_root(node.value)
            if isinstance(root, ast.Name) and root.id in bound:
                yield f"{node.lineno}: {ast.unparse(node)}"
        elif isinstance(node, ast.Call) and node.args:
            function = node.func
            name = function.id if isinstance(function, ast.Name) else function.attr if isinstance(
                function, ast.Attribute) else None
            if name in ("setattr", "delattr") and isinstance(function, ast.Attribute):  # monkeypatch.setattr
                index = 0
            elif isinstance(function, ast.Name) and name in NAMED_ATTRIBUTE_CALLS:
                index = NAMED_ATTRIBUTE_CALLS[name]
            else:
                continue
            target = node.args[index]
            attribute = node.args[index + 1] if len(node.args) > index + 1 else None
            if isinstance(target, ast.Constant) and isinstance(target.value, str):  # setattr("pkg.mod._x", v)
                parts = target.value.split(".")
                if parts[0] in project and any(is_private(part) for part in parts):
                    yield f"{node.lineno}: {ast.unparse(node)[:100]}"
            elif (isinstance(_chain_root(target), ast.Name) and _chain_root(target).id in bound
                  and isinstance(attribute, ast.Constant) and isinstance(attribute.value, str)
                  and is_private(attribute.value)):
                yield f"{node.lineno}: {ast.unparse(node)[:100]}"


def _module_level_names(tree: ast.Module) -> Set[str]:
    """Names a module assigns at its top level (its constants, tables, registries)."""
    names: Set[str] = set()
    for statement in tree.body:
        targets = statement.targets if isinstance(statement, ast.Assign) else (
            [statement.target] if isinstance(statement, ast.AnnAssign) else [])
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Name):
                    names.add(node.id)
    return names


def _mutations(node: ast.AST, names: Set[str]) -> Iterator[ast.AST]:
    """Statements and calls under ``node`` that change an object held by one of ``names`` in place."""
    for child in ast.walk(node):
        if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) \
                and child.func.attr in MUTATING_METHODS:
            root = _chain_root(child.func.value)
            if isinstance(root, ast.Name) and root.id in names:
                yield child
        elif isinstance(child, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = child.targets if isinstance(child, (ast.Assign, ast.Delete)) else [child.target]
            for target in targets:
                if isinstance(target, (ast.Subscript, ast.Attribute)):
                    root = _chain_root(target)
                    if isinstance(root, ast.Name) and root.id in names:
                        yield child


def _local_names(function: ast.AST) -> Set[str]:
    """Parameters and names assigned inside ``function`` (they shadow module-level names)."""
    local = {arg.arg for arg in ast.walk(function.args) if isinstance(arg, ast.arg)}
    local |= {node.id for node in ast.walk(function) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    return local


def module_state_changes(source: str) -> Iterator[str]:
    """``global`` statements and in-place changes of module-level names in ``source``: '<line>: <what>'."""
    tree = ast.parse(source)
    module_names = _module_level_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            yield f"{node.lineno}: global {', '.join(node.names)}"
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for statement in tree.body:  # code that runs at import
        if not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for change in _mutations(statement, module_names):
                yield f"{change.lineno}: at import: {ast.unparse(change).splitlines()[0][:100]}"
    seen: Set[int] = set()
    for function in functions:  # code that runs later
        for change in _mutations(function, module_names - _local_names(function)):
            if id(change) not in seen:  # a nested function's body is walked with its parent's too
                seen.add(id(change))
                yield f"{change.lineno}: in {function.name}(): {ast.unparse(change).splitlines()[0][:100]}"


def _violations(check) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    for path in tracked_python_files():
        problems = list(check(path, (REPO / path).read_text(encoding="utf-8")))
        if problems:
            found[path] = problems
    return found


def _report(found: Dict[str, List[str]]) -> str:
    return "\n".join(f"{path}:{problem}" for path, problems in found.items() for problem in problems)


# ----------------------------------------------------------------------------- the rules on the repository


def test_no_private_names_imported_or_used_across_modules():
    project = project_module_names(tracked_python_files())
    found = _violations(lambda path, source: private_access(source, project))
    assert not found, "private names used across modules (give them a public name):\n" + _report(found)


def test_no_global_statements_or_module_level_state_changed_after_definition():
    found = _violations(lambda path, source: module_state_changes(source))
    assert not found, "module-level state changed after definition (build it once, complete):\n" + _report(found)


# ----------------------------------------------------------------------------- the checks find what they should

PROJECT = {"ranksim", "datasets"}


def test_private_access_check_finds_each_form():
    source = '''
import ranksim.regularizer as reg
import ranksim
from ranksim.ranking import _order, rank
from . import _sibling
from datasets import AgeDB
from torch.utils.data import _utils          # not a project module: allowed
import torch
train = load_folder_module("train", path)
reg._flatten(x)
ranksim.ranking._order(x)
AgeDB._cache
train._helper
getattr(reg, "_flatten")
monkeypatch.setattr(reg, "_check", None)
monkeypatch.setattr("ranksim.fds._tables", None)
torch.nn.modules.batchnorm._BatchNorm       # not a project module: allowed
self._state, reg.__file__, ranksim.__version__, rank.__name__  # own attributes and dunders: allowed
'''
    lines = sorted(int(finding.split(":")[0]) for finding in private_access(source, PROJECT))
    assert lines == [4, 5, 10, 11, 12, 13, 14, 15, 16], lines


def test_module_state_check_finds_each_form():
    source = '''
TABLE = {"a": 1}
ROWS = []
CACHE = {}
for name in ("x",):
    ROWS.append(name)                # at import
TABLE["b"] = 2                       # at import
counter = 0

def bump():
    global counter                   # a global statement
    counter += 1

def remember(key, value):
    CACHE[key] = value               # a registry filled later

def local_only(ROWS):
    ROWS.append(1)                   # a parameter that shadows the module's name: allowed
    table = dict(TABLE)
    table["c"] = 3                   # a copy: allowed
'''
    found = sorted(module_state_changes(source), key=lambda finding: int(finding.split(":")[0]))
    assert [int(finding.split(":")[0]) for finding in found] == [6, 7, 11, 15], found


# ------------------------------------------------------------------ one age program in two folders

BLOCK = re.compile(r"^# ----- dataset block:.*?^# ----- end of the dataset block -----$", re.S | re.M)


def without_dataset_block(path: Path) -> str:
    text = path.read_text()
    blocks = BLOCK.findall(text)
    assert len(blocks) == 1, f"{path}: expected one marked dataset block, found {len(blocks)}"
    return BLOCK.sub("# ----- dataset block -----", text)


def test_the_two_age_programs_differ_only_in_their_dataset_block():
    agedb = without_dataset_block(REPO / "agedb-dir" / "train.py").splitlines()
    imdb = without_dataset_block(REPO / "imdb-wiki-dir" / "train.py").splitlines()
    different = [f"line {i + 1}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(agedb, imdb)) if a != b]
    assert not different and len(agedb) == len(imdb), (
        "agedb-dir/train.py and imdb-wiki-dir/train.py differ outside the dataset block (make the same change in "
        f"both): {different[:5]} (lengths {len(agedb)} / {len(imdb)})")


def test_the_dataset_blocks_name_their_own_dataset():
    agedb = BLOCK.search((REPO / "agedb-dir" / "train.py").read_text()).group(0)
    imdb = BLOCK.search((REPO / "imdb-wiki-dir" / "train.py").read_text()).group(0)
    assert "AgeDB as Dataset" in agedb and '"dataset": "agedb"' in agedb
    assert "IMDBWIKI as Dataset" in imdb and '"dataset": "imdb_wiki"' in imdb
