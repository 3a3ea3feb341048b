"""Every `python ...` / `torchrun ...` command shown in a README names a script that exists and
flags that script's parser accepts.

The commands themselves need real data sets and GPUs; what they do is exercised end to end on tiny
generated data by the other tests (train.py runs, data scripts against a local server, the demo).
This test closes the gap between those tests and the documentation: a renamed flag or script, or a
typo in a README, fails here. Each command's script is run in-process up to its argument parsing
(argparse's parse_args is intercepted right after it succeeds), from the directory the README says
to run it in.
"""
import argparse
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
READMES = sorted(p for p in REPO.glob("**/README.md") if ".venv" not in p.parts and ".git" not in p.parts)
# Modules the benchmark folders define under the same names; cleared between scripts.
FOLDER_MODULES = ("datasets", "models", "loss", "ranking", "resnet", "train")
PLACEHOLDER = re.compile(r"<([^<>]*)>")


class _Parsed(BaseException):
    """Raised instead of running the program once its arguments parsed."""


def _code_lines(text):
    """Shell lines of fenced blocks (continuations joined) and inline `python ...` spans.

    A block starts with the line None: each block is read from the README's own folder.
    """
    lines, in_block, pending = [], False, ""
    for raw in text.splitlines():
        if raw.strip().startswith("```"):
            in_block = not in_block
            if in_block:
                lines.append(None)
            continue
        if in_block:
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            lines.append(line)
        else:
            spans = re.findall(r"`((?:python|torchrun) [^`]+)`", raw)
            lines.extend([None, *(m.strip() for m in spans)] if spans else [])
    return lines


def _commands(readme):
    """(cwd, variables, argv) for each command in a README, following `cd` lines in its blocks."""
    text = readme.read_text()
    variables = dict(re.findall(r'^([A-Z_]+)="([^"]*)"', text, flags=re.M))
    cwd, found = readme.parent, []
    for line in _code_lines(text):
        if line is None:
            cwd = readme.parent
            continue
        line = line.split(" # ")[0].strip()
        if line.startswith("cd "):
            cwd = (cwd / line[3:].strip()).resolve()
            continue
        if not line.startswith(("python ", "torchrun ")):
            continue
        line = line.replace("<same flags>", "")
        line = PLACEHOLDER.sub(lambda m: "X" if " " not in m.group(1) else "", line)
        line = re.sub(r"\[(--[^\]]+)\]", r"\1", line)  # optional flags shown as [--fds]
        line = re.split(r" (?:\||2?>)", line)[0]  # drop pipes and redirections
        argv = shlex.split(os.path.expandvars(_expand(line, variables)))
        # "..." stands for "the other flags"; "cpu|cuda" lists alternatives: check the first
        argv = [a.split("|")[0] for a in argv if a != "..."]
        if any(a.endswith(".py") for a in argv) or argv[1:2] in (["-m"], ["-c"]):
            found.append((cwd, argv))  # (a bare `torchrun --nproc_per_node N` in prose names no script)
    return found


def _expand(line, variables):
    for name, value in variables.items():
        line = line.replace("$" + name, value)
    return line


def _script_and_args(argv):
    if argv[0] == "torchrun":  # torchrun [options] script.py [args]
        index = next(i for i, a in enumerate(argv) if a.endswith(".py"))
        return argv[index], argv[index + 1:]
    return argv[1], argv[2:]


def _cases():
    cases = []
    for readme in READMES:
        for cwd, argv in _commands(readme):
            if argv[1:2] in (["-m"], ["-c"]):
                continue  # python -m <module> / -c <code>: no script of ours to check
            script, args = _script_and_args(argv)
            base = next((d for d in (cwd, *cwd.parents) if (d / script).is_file()), None)
            label = f"{readme.relative_to(REPO)}: {' '.join(argv)}"
            cases.append(pytest.param(base, script, args, id=label[:150]))
    return cases


CASES = _cases()


def test_the_readmes_show_commands():
    assert len(CASES) > 40  # guards the extraction itself: the READMEs show dozens of commands


@pytest.mark.parametrize("base,script,args", CASES)
def test_readme_command_parses(base, script, args, monkeypatch):
    assert base is not None, f"{script}: no such script next to the README or in a folder above it"
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *a, **kw):
        original(self, *a, **kw)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.chdir(base)
    path = (base / script).resolve()
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    monkeypatch.syspath_prepend(str(path.parent))
    for name in FOLDER_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    expected = SystemExit if {"-h", "--help"} & set(args) else _Parsed
    with pytest.raises(expected) as stopped:
        runpy.run_path(str(path), run_name="__main__")
    if expected is SystemExit:
        assert stopped.value.code in (0, None)  # help printed, not an argument error
