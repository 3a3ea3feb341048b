"""Checkpoint I/O: atomic writes, safe loads, and strict state_dict loading.

Published image-checkpoint layout (docs/published_behaviour.md §7), which :func:`make_checkpoint` writes and the
published code reads::

    {'epoch': int (epochs completed), 'model': 'resnet50', 'best_loss': float,
     'state_dict': {'module.conv1.weight': Tensor, ..., 'module.FDS.running_mean': Tensor},
     'optimizer': optimizer.state_dict()}

plus, in our own checkpoints, optional extra keys for exact resumption (e.g. 'rng', 'scaler').

Safety and robustness rules:
- Writes go to a temp file in the destination directory, are fsynced, then ``os.replace``d over the
  target, so a crash or SIGKILL leaves either the old file or the new one, never a truncated one.
- Loads use ``torch.load(weights_only=True)``: only tensors, plain containers, numbers, strings
  (and numpy numeric scalars, which older training code stores as e.g. ``best_loss``) are accepted;
  no code from a checkpoint ever runs.
- :func:`load_model_state` never loads partially: any missing/unexpected key or shape mismatch
  raises :class:`~ranksim.harness.cli.UserError` listing the keys, except for keys the caller
  explicitly opts out of (``skip``, ``ignore_fds``, ``allow_missing_fds``).
"""
import io
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from ranksim.harness.cli import UserError, cannot_write

MODULE_PREFIX = "module."  # what nn.DataParallel / DistributedDataParallel put before every key
FDS_PREFIX = "FDS."  # FDS buffers live at model.FDS (docs/published_behaviour.md §3, §7)
PUBLISHED_KEYS = ("epoch", "model", "best_loss", "state_dict", "optimizer")
MAX_LISTED_KEYS = 8  # error messages list at most this many keys per category

PathLike = Union[str, "os.PathLike[str]"]


# ----------------------------------------------------------------------------- writing


def atomic_write(path: PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(binary_file)`` on a temp file next to ``path``, fsync it, rename it to ``path``.

    Creates the parent directory. If ``write`` raises, the temp file is removed, any previous file at
    ``path`` is untouched, and the exception propagates; an OSError (full disk, read-only folder) becomes
    the UserError "cannot write <path>: <cause>".
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise cannot_write(path, exc) from None
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    """Make a rename durable across power loss (best effort; not supported on every OS)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> None:
    """Write ``state`` (dict) to ``path`` with torch.save, atomically (temp file + fsync + rename).

    Creates the parent directory. On any failure the previous file at ``path`` (if any) is intact
    and no temp file is left behind. The state is serialised in memory first: torch.save writing
    straight to a full disk fails with a RuntimeError from its C++ writer that hides the OSError, while
    the plain file write reports it ("cannot write <path>: No space left on device").
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def copy_as_best(path: PathLike, best_path: PathLike) -> None:
    """Atomically copy the checkpoint file ``path`` to ``best_path`` (e.g. ckpt.best.pth.tar)."""
    with open(path, "rb") as src:
        atomic_write(best_path, lambda dst: shutil.copyfileobj(src, dst, 1 << 20))


def add_module_prefix(state_dict: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """Return a copy of ``state_dict`` with every key starting with 'module.' (already-prefixed kept)."""
    return OrderedDict(
        (k if k.startswith(MODULE_PREFIX) else MODULE_PREFIX + k, v) for k, v in state_dict.items()
    )


def strip_module_prefix(state_dict: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """Return a copy of ``state_dict`` with one leading 'module.' removed from each key that has it."""
    return OrderedDict(
        (k[len(MODULE_PREFIX):] if k.startswith(MODULE_PREFIX) else k, v) for k, v in state_dict.items()
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside an nn.DataParallel / DistributedDataParallel wrapper (or ``model`` itself)."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def make_checkpoint(
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer],
    epoch: int,
    best_loss: float,
    arch: str = "resnet50",
    extra: Optional[Dict[str, Any]] = None,
    module_prefix: bool = True,
) -> Dict[str, Any]:
    """Build a checkpoint dict in the published layout (docs/published_behaviour.md §7) from a bare or wrapped model.

    model: the model, bare or DataParallel/DDP-wrapped; optimizer: its optimizer (None stores None);
    epoch: number of completed epochs (the published code stores e + 1); best_loss: best val score
    so far (float); arch: value of the 'model' key; extra: additional keys for our own resumption
    (values must be tensors/containers/numbers/strings so weights_only loading works; the five
    published keys cannot be overridden); module_prefix: True writes 'module.'-prefixed keys as the
    published (DataParallel) code does; False writes bare keys (e.g. STS-B's plain layout).
    The state_dict tensors are the live parameters (no copy): save the dict before training on.
    """
    state_dict = unwrap_model(model).state_dict()
    checkpoint = {
        "epoch": int(epoch),
        "model": arch,
        "best_loss": float(best_loss),
        "state_dict": add_module_prefix(state_dict) if module_prefix else OrderedDict(state_dict),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
    }
    if extra:
        clashes = sorted(set(extra) & set(PUBLISHED_KEYS))
        if clashes:
            raise ValueError(f"extra checkpoint keys {clashes} would replace published keys")
        checkpoint.update(extra)
    return checkpoint


# ----------------------------------------------------------------------------- reading


def _numpy_scalar_globals() -> list:
    """Pickle globals needed to rebuild numpy numeric scalars (data only, no code execution)."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    return [
        multiarray.scalar,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),  # name in files written by numpy 1.x
        (multiarray.scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *sorted(dtype_classes, key=lambda c: c.__name__),
    ]


def check_checkpoint_flag(flag: str, path: PathLike, file_name: str = "ckpt.pth.tar") -> None:
    """UserError naming ``flag`` (e.g. '--resume') unless ``path`` is an existing file. A run directory
    in its place (a common slip) gets "is a directory; pass <path>/<file_name>" instead of "not found"."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a directory, not a checkpoint file; pass the checkpoint inside it, "
                        f"e.g. {flag} {os.path.join(path, file_name)}")
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path}: checkpoint file not found; pass the path of a {file_name}")


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint file safely (torch.load weights_only=True) and return it (dict).

    map_location: as for torch.load ('cpu' by default, so GPU-saved files load anywhere).
    Raises UserError naming the file when it is missing, truncated, not a torch file, not a dict, or
    holds Python objects other than tensors/containers/numbers/strings (which could run code).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory, not a checkpoint file" if os.path.isdir(path) else "not found"
        raise UserError(f"checkpoint {path}: {what}; check the checkpoint path passed on the command line")
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe_globals is not None:
            with safe_globals(_numpy_scalar_globals()):
                checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        else:  # pragma: no cover - torch < 2.5: numpy scalars are refused
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError/... for bad files
        message = str(exc)
        # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module ..."
        refused = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", message, re.IGNORECASE)
        if refused:
            raise UserError(f"checkpoint {path}: contains code (the pickle global {refused.group(1)}) that "
                            "weights_only loading refuses, so it was not loaded; use a checkpoint written by "
                            "torch.save of tensors and plain data from a source you trust") from None
        if os.path.getsize(path) == 0:
            detail = "the file is empty"
        else:
            detail = "not a readable PyTorch checkpoint (truncated, damaged, or another file format)"
        raise UserError(f"checkpoint {path}: {detail}; re-download or re-create it") from exc
    if not isinstance(checkpoint, dict):
        raise UserError(
            f"checkpoint {path}: holds a {type(checkpoint).__name__}, not a dict; "
            "pass a file written by torch.save(checkpoint_dict) (e.g. ckpt.pth.tar)"
        )
    return checkpoint


def state_dict_of(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> Mapping[str, Any]:
    """The model state_dict inside ``checkpoint``: its 'state_dict' entry (published image layout)
    or the checkpoint itself when it is already a plain state_dict (published STS-B layout).

    source: file name used in the error message. Raises UserError when neither fits.
    """
    if isinstance(checkpoint.get("state_dict"), Mapping):
        state_dict = checkpoint["state_dict"]
    else:
        state_dict = checkpoint
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad or not state_dict:
        raise UserError(
            f"{source}: has no model state_dict (expected a 'state_dict' entry or a dict of tensors; "
            f"found keys {_list_keys(list(checkpoint))}); pass a model checkpoint"
        )
    return state_dict


@dataclass
class LoadReport:
    """What :func:`load_model_state` did (key names without 'module.').

    loaded: keys copied from the checkpoint; kept_init: model keys left at their current values
    (skipped, FDS allowed missing, or absent num_batches_tracked); ignored: checkpoint keys dropped.
    """

    loaded: List[str] = field(default_factory=list)
    kept_init: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)


def _list_keys(keys: List[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = len(keys) - MAX_LISTED_KEYS
    return shown + (f", ... and {more} more" if more > 0 else "")


def load_model_state(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    ignore_fds: bool = False,
    skip: Optional[Callable[[str], bool]] = None,
    allow_missing_fds: bool = False,
    source: str = "checkpoint",
    check_only: bool = False,
) -> LoadReport:
    """Load ``state_dict`` into ``model`` strictly, with or without 'module.' on either side.

    model: bare or DataParallel/DDP-wrapped; state_dict: parameter/buffer tensors, keys with or
    without the 'module.' prefix. Key names below are without the prefix.
    ignore_fds: drop the checkpoint's 'FDS.*' keys and leave the model's FDS buffers (if it has any)
        at their current values (evaluation without --fds of a checkpoint trained with FDS).
    allow_missing_fds: when the model has FDS buffers that the checkpoint lacks, keep their current
        values instead of failing (a checkpoint trained without FDS, e.g. for --evaluate --fds).
    skip: predicate on key names to exclude from both sides: those model keys keep their current
        values and those checkpoint keys are dropped (RRT: ``lambda k: 'linear' in k or 'fc' in k``).
    source: name of the checkpoint file for error messages.
    check_only: do every check and return the report, but load nothing (e.g. to vet a checkpoint
        against a model skeleton on the meta device before any file is written).
    A model BatchNorm's ``num_batches_tracked`` absent from the checkpoint (files written by very old
    PyTorch) keeps its value; it does not affect the outputs with the default BN momentum.
    Any other missing key, unexpected key or shape mismatch raises UserError listing them and
    nothing is loaded. Returns a :class:`LoadReport`.
    """
    target = unwrap_model(model)
    skip = skip or (lambda key: False)
    incoming = strip_module_prefix(state_dict)
    expected = target.state_dict()
    report = LoadReport()

    def is_fds(key: str) -> bool:
        return key.startswith(FDS_PREFIX)

    to_load = OrderedDict()
    for key, value in incoming.items():
        if skip(key) or (ignore_fds and is_fds(key)):
            report.ignored.append(key)
        else:
            to_load[key] = value

    missing, unexpected, mismatched = [], [], []
    for key in expected:
        if key in to_load:
            continue
        if skip(key) or (is_fds(key) and (ignore_fds or allow_missing_fds)):
            report.kept_init.append(key)
        elif key.endswith(".num_batches_tracked"):
            report.kept_init.append(key)
        else:
            missing.append(key)
    for key, value in to_load.items():
        if key not in expected:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[key].shape):
            mismatched.append(f"{key} {list(value.shape)} vs model {list(expected[key].shape)}")

    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys ({_list_keys(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_list_keys(unexpected)})")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches ({_list_keys(mismatched)})")
        hint = "it was probably saved for another architecture or dataset"
        if any(is_fds(k) for k in unexpected):
            hint += " (FDS keys present: pass --fds to use them)"
        elif any(is_fds(k) for k in missing):
            hint += " (the model has FDS but the checkpoint does not: was it trained without --fds?)"
        raise UserError(f"{source} does not match the model: {'; '.join(problems)}; {hint}")
    if check_only:
        report.loaded = list(to_load)
        return report

    result = target.load_state_dict(to_load, strict=False)
    # Everything was checked above; this guards against a module that renames keys while loading.
    leftover = [k for k in result.missing_keys if k not in report.kept_init]
    if leftover or result.unexpected_keys:
        raise UserError(
            f"{source} does not match the model: missing {_list_keys(leftover)}, "
            f"unexpected {_list_keys(result.unexpected_keys)}; it was probably saved for another architecture"
        )
    report.loaded = list(to_load)
    return report


def load_optimizer_state(optimizer: torch.optim.Optimizer, checkpoint: Mapping[str, Any], resume_path: str) -> None:
    """--resume: put ``checkpoint['optimizer']`` into ``optimizer``.

    A missing entry or a state that does not fit (another --optimizer, or other trainable parameters
    under --retrain_fc) is a one-line UserError naming ``resume_path`` and the flags to match.
    """
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise UserError(f"--resume {resume_path}: its optimizer state does not fit this run "
                        f"({' '.join(str(exc).split())[:120]}); resume with the --optimizer and "
                        "--retrain_fc settings of the original run") from None


# ----------------------------------------------------------------------------- RNG state for resume


def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as weights_only-loadable data (tensors/tuples)."""
    import random

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states restored when present and CUDA is available)."""
    import random

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)
