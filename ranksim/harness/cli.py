"""User-facing errors: one clear line and a non-zero exit instead of a traceback.

Code anywhere in the project raises ``UserError("<file/flag/value>: <what is wrong>; <how to fix>")``
for problems the user caused (missing file, bad flag, corrupt checkpoint). Command-line entry points
wrap their ``main`` with :func:`run_cli`, which prints such an error as ``error: <message>`` on stderr
and exits with status 2. Every other exception is a bug and keeps its full traceback, except running
out of GPU memory (one line too, exit status 3: ranksim/harness/memory.py).

Exit statuses of every program: 0 done, 2 user error (bad flag, file or value), 3 out of GPU memory,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM); anything else is a bug (Python's 1, with a traceback).
"""
import argparse
import difflib
import os
import signal
import sys
import threading
from typing import Any, Callable, List, NoReturn

from ranksim.harness.memory import (
    BEFORE_THE_RUN,
    OUT_OF_MEMORY_EXIT,
    MemoryReport,
    OutOfMemory,
    is_out_of_memory,
)

USER_ERROR_EXIT = 2  # same status argparse uses for bad command lines
INTERRUPT_EXIT = 130  # 128 + SIGINT, the shell convention for Ctrl-C
TERMINATED_EXIT = 128 + signal.SIGTERM  # 143: what SLURM / Kubernetes / `kill` send before killing a job


class UserError(Exception):
    """A problem caused by the user's input (files, flags, values); the message says how to fix it."""


def parse_seeds(text: str) -> List[int]:
    """'0,1,2' -> [0, 1, 2]; UserError unless distinct non-negative integers (the demo scripts' --seeds)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds {text}: give distinct non-negative integers separated by commas, e.g. 0,1,2")
    return seeds


def one_line(message: str) -> str:
    """Collapse ``message`` (str) to a single line so the error never spills over several lines."""
    return " ".join(str(message).split())


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by run_cli's handler. A KeyboardInterrupt subclass so that every
    ``except KeyboardInterrupt`` path (the resume hint of a training run) handles it exactly like Ctrl-C."""


def interrupt_label(exc: BaseException) -> str:
    """How a stop is named in messages: 'terminated (SIGTERM)' or 'interrupted (Ctrl-C)'."""
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"


def raise_terminated(signum, frame) -> NoReturn:
    raise Terminated()


def run_cli(main_fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``main_fn(*args)`` and return its result, turning user errors into one line on stderr.

    UserError -> ``error: <message>`` on stderr, exit status 2.
    KeyboardInterrupt -> ``interrupted (Ctrl-C)[; <its message>]`` on stderr, exit status 130.
    SIGTERM (in the main thread) -> :class:`Terminated`, handled like Ctrl-C: ``terminated (SIGTERM)[; <its
    message>]`` on stderr, exit status 143.
    Out of GPU memory (torch.OutOfMemoryError, or the OutOfMemory a Run made of it with the --resume
    command) -> ``error: out of GPU memory in <phase> (...); try ...`` on stderr, exit status 3.
    Anything else propagates unchanged (a bug: the traceback is what a developer needs).
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if in_main_thread else None
    try:
        return main_fn(*args)
    except UserError as exc:
        sys.stdout.flush()  # keep earlier progress output before the error line
        print(f"error: {one_line(str(exc))}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt as exc:  # a training program may say how to resume: KeyboardInterrupt(hint)
        sys.stdout.flush()
        hint = f"; {one_line(str(exc))}" if str(exc) else ""
        print(f"{interrupt_label(exc)}{hint}", file=sys.stderr, flush=True)
        sys.exit(TERMINATED_EXIT if isinstance(exc, Terminated) else INTERRUPT_EXIT)
    except Exception as exc:
        if not isinstance(exc, OutOfMemory) and not is_out_of_memory(exc):
            raise  # a bug: keep the traceback
        sys.stdout.flush()
        message = str(exc) if isinstance(exc, OutOfMemory) else MemoryReport().message(exc, BEFORE_THE_RUN)
        print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
        sys.exit(OUT_OF_MEMORY_EXIT)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def cannot_write(path: "str | os.PathLike", error: OSError) -> UserError:
    """UserError "cannot write <path>: <cause>; ..." for an OSError (full disk, read-only or missing
    folder, a file where a folder should be) while writing ``path``."""
    cause = error.strerror or str(error) or type(error).__name__
    return UserError(f"cannot write {os.fspath(path)}: {cause}; free disk space or pass a writable location "
                     "(e.g. --store_root)")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose command-line errors are one line, like every other user error.

    Plain argparse prints its whole usage block (a dozen lines for train.py) before the error. This
    prints ``error: <argparse's message>; <prog> -h lists every flag`` on stderr and exits with status 2;
    for an unknown flag it names the closest known one (``did you mean --regularization_weight?``).
    ``-h`` shows every flag's default: the formatter is ArgumentDefaultsHelpFormatter unless another is
    given, and a flag without help text gets "(default: <value>)" as its help (argparse prints no line,
    and so no default, for a flag without help).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        for action in self._actions:
            if not action.help and action.option_strings and action.default not in (None, argparse.SUPPRESS):
                action.help = "(default: %(default)s)"
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        known = [option for action in self._actions for option in action.option_strings if option.startswith("--")]
        suggestions = []
        if message.startswith("unrecognized arguments:"):
            for token in message.split(":", 1)[1].split():
                flag = token.split("=", 1)[0]
                close = difflib.get_close_matches(flag, known, n=1) if flag.startswith("--") else []
                if close:
                    suggestions.append(f"{flag}: did you mean {close[0]}?")
        hint = f"`{self.prog} -h` lists every flag"
        self.exit(USER_ERROR_EXIT, f"error: {one_line(' '.join([message + ';'] + suggestions + [hint]))}\n")


def check_file(path: "str | os.PathLike", what: str, how_to_get: str) -> None:
    """Raise UserError("<what> not found: <path>; <how_to_get>") unless ``path`` is an existing file.

    (A directory in its place gives "<what> is a directory, not a file: <path>; <how_to_get>".)

    path: file that must exist; what: what it is ("AgeDB split file"); how_to_get: the command or
    step that creates it ("run `python data/create_agedb.py`").
    """
    if os.path.isdir(path):
        raise UserError(f"{what} is a directory, not a file: {os.fspath(path)}; {how_to_get}")
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {os.fspath(path)}; {how_to_get}")
