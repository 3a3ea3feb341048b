"""The run protocol every train.py follows (:class:`Run`), and the run bookkeeping under it: run
directory, log file, TensorBoard, results.json, device choice, seeding and worker count.

One protocol for the three programs::

    run = Run.for_training(args.store_root, args.store_name or run_name(args), ctx)   # or for_resume /
    with run:                                          # for_evaluation; errors and Ctrl-C go to training.log
        run.log("...")
        ...                                            # per epoch / validation check:
        run.save(state, is_best)                       # best first, atomic; then ckpt.pth.tar
        ...
        best = run.load_best(model)                    # the best weights on every rank
        run.write_results(results)                     # results.json

Files of a run directory, the same in every program: training.log, TensorBoard events,
ckpt.pth.tar (latest), ckpt.best.pth.tar (best), results.json (written last: its presence marks a
finished run). Only the main process writes; on other ranks every write is a no-op.

Run directory rule: ``make_run_dir(root, name)`` never reuses a directory that holds anything (a
finished run's results.json, checkpoints, logs); it picks ``name_2``, ``name_3``, ... instead, so
running the same command twice never overwrites a run and never prompts. Names, the same in every
train.py (unless --store_name is given): a training run is named by its settings and a timestamp; the
continuation (--resume) of a FINISHED run takes the finished run's name, so make_run_dir makes
``<name>_2``; an evaluation is ``eval_<run directory of the checkpoint, first 40 characters>_<timestamp>``
(see :func:`evaluation_run_name`).
"""
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Collection, Dict, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from ranksim.harness.checkpoint import (
    atomic_write,
    copy_as_best,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    restore_rng_state,
    save_checkpoint,
    state_dict_of,
)
from ranksim.harness.cli import UserError, cannot_write, interrupt_label, one_line
from ranksim.harness.distributed import DistContext, broadcast_object, sync_state
from ranksim.harness.memory import MemoryReport, OutOfMemory, is_out_of_memory

LOG_NAME = "training.log"
RESULTS_NAME = "results.json"
CKPT_NAME = "ckpt.pth.tar"
BEST_NAME = "ckpt.best.pth.tar"
SCALER_KEY = "scaler"  # extra checkpoint key: the fp16 GradScaler state (--amp fp16)

PathLike = Union[str, "os.PathLike[str]"]


EVAL_NAME_CHARS = 40  # of the checkpoint's run directory name kept in an evaluation's name


def evaluation_run_name(checkpoint: PathLike) -> str:
    """Directory name of an --evaluate run of ``checkpoint``: 'eval_<its folder, cut to 40 characters>_<timestamp>',
    e.g. eval_agedb_resnet50_sqrt_inv_ranksim_100.0_2_20240101-120000 (results.json names the full path)."""
    source = Path(checkpoint).resolve().parent.name[:EVAL_NAME_CHARS].rstrip("_") or "checkpoint"
    return f"eval_{source}_{time.strftime('%Y%m%d-%H%M%S')}"


def make_run_dir(store_root: PathLike, store_name: str) -> Path:
    """Create and return a fresh run directory ``<store_root>/<store_name>`` (Path).

    If that directory exists and is non-empty (a finished or interrupted run), the first free
    ``<store_name>_2``, ``<store_name>_3``, ... is created instead; an existing EMPTY directory is
    used as is. Creation uses os.mkdir, so two runs started at once never share a directory.
    store_name must be a plain directory name (UserError otherwise).
    """
    if not store_name or store_name in (".", "..") or "/" in store_name or os.sep in store_name:
        raise UserError(f"--store_name {store_name!r}: must be a plain directory name (no '/'), e.g. 'vanilla'")
    root = Path(store_root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--store_root {root}: is a file, not a directory; pass a directory for run outputs")
    suffix = 1
    while True:
        candidate = root / (store_name if suffix == 1 else f"{store_name}_{suffix}")
        try:
            root.mkdir(parents=True, exist_ok=True)
            candidate.mkdir()
            return candidate
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                return candidate
        except OSError as exc:  # read-only or full disk, a file in the path
            raise cannot_write(candidate, exc) from None
        suffix += 1


class RunLogger:
    """Console + ``<run_dir>/training.log`` + TensorBoard logger for one run.

    run_dir: the run directory (created if needed); enabled: False makes every method a no-op and
    creates nothing (use it on non-zero distributed ranks). Console lines go through tqdm.write so
    they do not break progress bars; log-file lines carry a timestamp and are flushed at once (a
    killed run keeps its log). TensorBoard event files are written in run_dir by a SummaryWriter
    created on the first scalar; without the tensorboard package one notice is logged and scalars
    are dropped.
    """

    def __init__(self, run_dir: PathLike, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._log_file = None
        self._writer = None
        self._tensorboard_missing = False
        if enabled:
            self._open_log()

    def _open_log(self) -> None:
        path = self.run_dir / LOG_NAME
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._log_file = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise cannot_write(path, exc) from None

    def _reopen_if_deleted(self) -> None:
        """The run directory (or training.log) deleted mid-run: writes would go to the unlinked file, so
        re-create both and say so once, on stderr and at the top of the new training.log."""
        if os.fstat(self._log_file.fileno()).st_nlink > 0:
            return
        self._log_file.close()
        self._open_log()
        notice = (f"warning: {self.run_dir / LOG_NAME} was deleted during the run; re-created it (with the run "
                  "directory if that was deleted too): earlier log lines and checkpoints are gone, the next ones "
                  "are written again")
        print(notice, file=sys.stderr, flush=True)
        self._write_lines(notice)

    def _write_lines(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            for line in str(message).splitlines() or [""]:
                self._log_file.write(f"{stamp} | {line}\n")
            self._log_file.flush()
        except OSError as exc:
            raise cannot_write(self.run_dir / LOG_NAME, exc) from None

    def info(self, message: str) -> None:
        """Print ``message`` (str, may span lines) and append it to training.log."""
        if not self.enabled:
            return
        from tqdm import tqdm

        tqdm.write(str(message), file=sys.stdout)
        sys.stdout.flush()
        self._reopen_if_deleted()
        self._write_lines(str(message))

    def record_error(self, error: BaseException, prefix: str = "error: ") -> None:
        """Append ``<prefix><one-line message>`` to training.log only (run_cli prints it on stderr)."""
        if not self.enabled or self._log_file is None:
            return
        self._reopen_if_deleted()
        self._write_lines(prefix + one_line(str(error)))

    def interrupted(self, checkpoint: PathLike, stop: Optional[KeyboardInterrupt] = None) -> KeyboardInterrupt:
        """Ctrl-C or SIGTERM (``stop``: the caught KeyboardInterrupt / errors.Terminated) during a run: the
        same kind of exception, whose message (printed by run_cli) says how to resume from ``checkpoint``
        (the run's ckpt.pth.tar) when it exists; the same line goes to training.log."""
        hint = (f"resume with --resume {checkpoint}" if Path(checkpoint).is_file()
                else "no checkpoint was written yet; start again")
        stopped = type(stop or KeyboardInterrupt())(hint)
        self.record_error(stopped, prefix=f"{interrupt_label(stopped)}; ")
        return stopped

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Record scalar ``value`` (float) under ``tag`` (e.g. 'val/mae') at ``step`` (int)."""
        if not self.enabled or self._tensorboard_missing:
            return
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tensorboard_missing = True
                self.info("note: the tensorboard package is not installed, so TensorBoard scalars are not "
                          "recorded (pip install tensorboard); training.log has the same numbers")
                return
            self._writer = SummaryWriter(log_dir=str(self.run_dir))
        self._writer.add_scalar(tag, float(value), int(step))

    def scalars(self, values: Dict[str, float], step: int) -> None:
        """Record every ``tag: value`` of ``values`` at ``step``."""
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def close(self) -> None:
        """Flush and close training.log and the TensorBoard writer (safe to call twice)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Run:
    """One run directory and what a training program writes to it (see the module docstring).

    Make one with :meth:`for_training`, :meth:`for_resume` or :meth:`for_evaluation` (rank 0 decides the
    directory, the other ranks are told it) and use it as a context manager: a UserError is recorded
    in training.log before it propagates, Ctrl-C / SIGTERM become a KeyboardInterrupt whose message
    says how to resume, running out of GPU memory becomes an :class:`OutOfMemory` whose one line (also
    recorded in training.log) names the phase, the remedies and the --resume command, and the log is closed.
    """

    def __init__(self, directory: PathLike, ctx: Optional[DistContext] = None, resumed_from: Optional[str] = None):
        self.ctx = ctx or DistContext()
        self.dir = Path(directory)
        self.ckpt_path, self.best_path = self.dir / CKPT_NAME, self.dir / BEST_NAME
        self.logger = RunLogger(self.dir, enabled=self.ctx.is_main)
        # The newest checkpoint of completed training, named when a run diverges.
        self.last_good: Optional[str] = os.fspath(resumed_from) if resumed_from else None
        # What the program is doing ('epoch 3, validation') and the settings that size its memory: named
        # if the GPU runs out of memory (ranksim/harness/memory.py). The program sets both.
        self.phase = "start-up"
        self.memory = MemoryReport()

    # ------------------------------------------------------------------ the three ways a run starts

    @classmethod
    def for_training(cls, store_root: PathLike, name: str, ctx: Optional[DistContext] = None) -> "Run":
        """A fresh ``<store_root>/<name>`` (``<name>_2``, ... when taken: :func:`make_run_dir`)."""
        return cls._open(lambda: make_run_dir(store_root, name), ctx)

    @classmethod
    def for_resume(cls, checkpoint: PathLike, store_root: PathLike, store_name: str = "",
                   ctx: Optional[DistContext] = None) -> "Run":
        """--resume ``checkpoint``: continue in its own run directory while that run is unfinished
        (training.log, no results.json) and no other --store_name is asked for. A finished run is never
        written to again: its continuation gets ``<store_name or its name>_2`` (make_run_dir), which
        starts with a copy of the finished run's best checkpoint (see :meth:`resumed_best`)."""
        def directory() -> Path:
            own = Path(checkpoint).resolve().parent
            unfinished = (own / LOG_NAME).is_file() and not (own / RESULTS_NAME).exists()
            if unfinished and store_name in ("", own.name):
                return own
            new = make_run_dir(store_root, store_name or own.name)
            if (own / BEST_NAME).is_file():
                copy_as_best(own / BEST_NAME, new / BEST_NAME)
            return new
        return cls._open(directory, ctx, resumed_from=checkpoint)

    @classmethod
    def for_evaluation(cls, checkpoint: PathLike, store_root: PathLike, store_name: str = "",
                       ctx: Optional[DistContext] = None) -> "Run":
        """--evaluate ``checkpoint``: ``<store_root>/<store_name or eval_<its run, 40 chars>_<timestamp>>``."""
        return cls._open(lambda: make_run_dir(store_root, store_name or evaluation_run_name(checkpoint)), ctx)

    @classmethod
    def _open(cls, make_directory: Callable[[], Path], ctx: Optional[DistContext], resumed_from=None) -> "Run":
        ctx = ctx or DistContext()
        directory = make_directory() if ctx.is_main else None
        return cls(broadcast_object(directory, ctx), ctx, resumed_from)

    # ------------------------------------------------------------------ while it runs

    def log(self, message: str) -> None:
        """Print ``message`` and append it to training.log (main process only)."""
        self.logger.info(message)

    def scalars(self, values: Dict[str, float], step: int) -> None:
        """TensorBoard scalars ``{tag: value}`` at ``step``."""
        self.logger.scalars(values, step)

    def describe_memory(self, args: Any) -> None:
        """Name the settings of the parsed flags ``args`` (batch_size, lr, amp; img_size, channels_last where
        the program has them) in the message of an out-of-memory error (:class:`MemoryReport`)."""
        self.memory = MemoryReport.from_flags(args, self.ctx.device.type, self.ctx.world_size, self.ctx.rank)

    def resumed_best(self, recorded_best: float) -> float:
        """The best validation score to beat after --resume: the checkpoint's ``recorded_best`` when this
        run directory holds a best checkpoint, else inf (the next validation becomes the best)."""
        has_best = self.best_path.is_file() if self.ctx.is_main else None
        return float(recorded_best) if broadcast_object(has_best, self.ctx) else math.inf

    def save(self, state: Dict[str, Any], is_best: bool) -> None:
        """Write ``state`` as ckpt.pth.tar, and as ckpt.best.pth.tar when ``is_best``. Best first, each
        write atomic: a kill between the two writes leaves the newest state in the best file, and
        --resume then repeats this epoch (or check) from the previous ckpt.pth.tar, losing nothing.
        The second name of a best state is a hard link to the first (:func:`share_file`), not a copy."""
        if self.ctx.is_main:
            if is_best:
                save_checkpoint(state, self.best_path)
                share_file(self.best_path, self.ckpt_path)
            else:
                save_checkpoint(state, self.ckpt_path)
        self.last_good = os.fspath(self.ckpt_path)

    def diverged(self, error: Exception) -> UserError:
        """The UserError that stops a run whose loss diverged (``error`` says where): it names the last
        good checkpoint and how to go on."""
        if self.last_good:
            kept = f"the last good checkpoint is {self.last_good}"
            fix = f"resume it with --resume {self.last_good}"
        else:
            kept, fix = "no checkpoint was written (it diverged before the first one)", "start again"
        return UserError(f"{error}; stopped, {kept}; lower --lr (or --regularization_weight) and {fix}")

    def load_best(self, model: nn.Module, path: Optional[PathLike] = None) -> Dict[str, Any]:
        """Load the best checkpoint (or ``path``) into ``model`` (strict) on rank 0 and copy its weights to
        every rank; returns the checkpoint's entries other than the weights and optimizer state (epoch,
        iteration, best_loss, ...) on every rank."""
        path = os.fspath(path or self.best_path)
        info = None
        if self.ctx.is_main:
            checkpoint = load_checkpoint(path)
            load_model_state(model, state_dict_of(checkpoint, path), source=path)
            info = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer", "rng")}
        info = broadcast_object(info, self.ctx)
        sync_state(model, self.ctx)
        return info

    def write_results(self, results: Dict[str, Any]) -> None:
        """results.json (atomic; main process only), the file that marks the run finished."""
        if self.ctx.is_main:
            self.log(f"wrote {write_results_json(self.dir, results)}")

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if isinstance(exc, UserError):  # e.g. an unreadable image found mid-epoch: keep the reason with the run
                self.logger.record_error(exc)
            elif isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (cli.Terminated)
                raise self.logger.interrupted(self.ckpt_path, exc) from None
            elif exc is not None and is_out_of_memory(exc):  # the traceback would hide the one line that matters
                error = OutOfMemory(self.memory.message(exc, self.phase, checkpoint=self.last_good))
                self.logger.record_error(error)
                raise error from None
        finally:
            self.logger.close()


def share_file(path: Path, other: Path) -> None:
    """Make ``other`` name the same file as ``path``, atomically: a hard link made under a temporary name,
    then renamed over ``other``. A copy (copy_as_best) where the file system has no hard links.

    Why: a best checkpoint is also the latest, and copying it meant writing and fsyncing a few hundred MB
    again (ResNet-50 with Adam's state) at every best epoch. Sharing the file is safe because every
    checkpoint write replaces its file by a rename (a new file), never writes into it: when one of the
    two names is written again later, the other keeps its content.
    """
    temporary = other.with_name(f".{other.name}.{os.getpid()}.link")
    try:
        if temporary.exists():  # left by a process of this pid killed between the two calls below
            temporary.unlink()
        os.link(path, temporary)
        os.replace(temporary, other)
    except OSError:
        if temporary.exists():
            temporary.unlink()
        copy_as_best(path, other)


def restore_training(path: PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: Optional["torch.amp.GradScaler"] = None) -> Dict[str, Any]:
    """--resume ``path``: model weights (strict), optimizer state and the fp16 GradScaler's state (key
    'scaler') from our checkpoint; returns the checkpoint (its progress entries: epoch, best_loss, ...).
    The random streams are restored separately, by :func:`restore_random_state`, just before training."""
    path = os.fspath(path)
    checkpoint = load_checkpoint(path)
    load_model_state(model, state_dict_of(checkpoint, path), source=path)
    if checkpoint.get("optimizer") is not None:
        load_optimizer_state(optimizer, checkpoint, path)
    if scaler is not None and SCALER_KEY in checkpoint:
        scaler.load_state_dict(checkpoint[SCALER_KEY])
    return checkpoint


def restore_random_state(checkpoint: Dict[str, Any], ctx: DistContext, seed: int, step: int) -> None:
    """Call last before the first resumed batch, so that nothing draws from the restored streams first.
    One process: the saved streams (Python, NumPy, torch CPU/CUDA; 'rng'), so the run continues exactly
    as if uninterrupted. Under torchrun rank 0's streams cannot serve every rank: each re-seeds from
    (seed, rank, step), ``step`` being the epoch or iteration resumed at."""
    if ctx.distributed:
        seed_everything(seed + ctx.rank + 1009 * step)
    elif "rng" in checkpoint:
        restore_rng_state(checkpoint["rng"])


def to_jsonable(value: Any) -> Any:
    """Plain-JSON copy of ``value``: NaN/inf -> None, numpy/torch scalars and arrays -> Python
    numbers/lists, Paths -> str, tuples -> lists, dict keys -> str."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_results_json(run_dir: PathLike, results: Dict[str, Any]) -> Path:
    """Atomically write ``results`` (dict) to ``<run_dir>/results.json`` and return its Path.

    NaN and infinities become null (strict JSON); numpy/torch values become plain numbers.
    """
    path = Path(run_dir) / RESULTS_NAME
    text = json.dumps(to_jsonable(results), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


DATA_DIR_TYPED = "data_dir_as_typed"  # the recorded flag holding --data_dir as typed (data_dir itself: absolute)


def resolve_data_dir(args: Any, explicit: Collection[str] = (), recorded: Optional[Mapping[str, Any]] = None,
                     source: str = "") -> None:
    """Make ``args.data_dir`` absolute and keep the typed form in ``args.data_dir_as_typed``.

    Both go into the run's recorded flags (checkpoints, results.json), so whatever reads a run later
    (figures, --resume, --evaluate, reproduce.py) finds its data from any working directory; a run
    records flags, not the folder it was started in, so a relative ./data meant nothing elsewhere.
    --resume / --evaluate of one of our checkpoints (``recorded``: its flags; ``source``: e.g.
    '--resume <path>' for messages) without --data_dir on the command line (``explicit``: the flags given
    there) take the checkpoint's recorded absolute folder; a folder moved since is a UserError.
    """
    folder = (recorded or {}).get("data_dir")
    if "data_dir" not in explicit and isinstance(folder, str) and os.path.isabs(folder):
        typed = (recorded or {}).get(DATA_DIR_TYPED) or folder
        if not os.path.isdir(folder):
            raise UserError(f"{source}: its data folder (--data_dir {typed} when trained) is not at {folder}; pass "
                            "--data_dir FOLDER (the folder now holding the run's split files)")
        args.data_dir, args.data_dir_as_typed = folder, typed
        return
    args.data_dir_as_typed = args.data_dir
    args.data_dir = os.path.abspath(os.path.expanduser(args.data_dir))


def select_device(gpu: Optional[int] = None) -> torch.device:
    """The device to run on: ``cuda:<gpu>`` when CUDA is available (gpu None -> the current CUDA
    device, normally 0), else the CPU. ``--gpu`` without CUDA, or out of range, is a UserError."""
    if not torch.cuda.is_available():
        if gpu is not None:
            raise UserError(f"--gpu {gpu}: CUDA is not available on this machine (no usable NVIDIA GPU or a "
                            "CPU-only PyTorch build); leave out --gpu to run on the CPU")
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if gpu is None:
        gpu = torch.cuda.current_device()
    elif not 0 <= gpu < count:
        raise UserError(f"--gpu {gpu}: this machine has {count} CUDA device(s), numbered 0..{count - 1}")
    torch.cuda.set_device(gpu)  # so that tensors created on "cuda" land on the chosen GPU
    return torch.device("cuda", gpu)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def available_cpus() -> int:
    """Number of CPUs this process may run on (its affinity mask where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cap_workers(n: int) -> int:
    """DataLoader worker count: ``n`` capped at the CPUs present (UserError if ``n`` < 0)."""
    if n < 0:
        raise UserError(f"--workers {n}: must be 0 (load in the main process) or more")
    return min(n, available_cpus())
