"""Out of GPU memory: one line saying what ran out and what to do, instead of PyTorch's traceback.

A training program gives its run the flags that size its memory (``run.describe_memory(args)``) and names
each phase as it enters it (``run.phase = "epoch 3, training step 17"``; also "building the model", "epoch
3, FDS statistics pass", "epoch 3, validation", "test"). A CUDA out-of-memory error inside the run then
becomes, through :class:`ranksim.harness.run.Run` (which adds the --resume command and writes the line to
training.log) and :func:`ranksim.harness.cli.run_cli` (which prints it)::

    error: out of GPU memory in epoch 3, training step 17 (batch 256 on 1 process, 224x224 images, fp32,
    contiguous; PyTorch: tried to allocate 2.00 GiB, ...); try --amp bf16, ...; then resume with --resume ...

and exit status :data:`OUT_OF_MEMORY_EXIT` (3). One raised before a run exists (reading the data, building
the model of an age program) gets the same line without the run's settings. Checkpoints and results.json
are written atomically, so the error leaves no half-written file behind. torch is not imported here
(cli.py imports this module, and the data download programs import cli.py).
"""
import re
import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional

OUT_OF_MEMORY_EXIT = 3
BEFORE_THE_RUN = "start-up (reading the data or building the model, before the run directory was made)"


class OutOfMemory(Exception):
    """A CUDA out-of-memory error turned into its one-line message (run_cli prints it, exit status 3)."""


@dataclass
class MemoryReport:
    """The settings that size a run's memory and the remedies that apply to them (see the module docstring).

    settings: e.g. 'batch 256 on 1 process, 224x224 images, fp32, contiguous'; remedies: the flags to try,
    each with its note; on_gpu: whether the run uses CUDA (the message then says 'GPU memory').
    """

    settings: str = ""
    remedies: List[str] = field(default_factory=lambda: [
        "--amp bf16", "a smaller --batch_size with --lr scaled by the same factor",
        "torchrun --nproc_per_node N over more GPUs"])
    on_gpu: bool = True

    @classmethod
    def from_flags(cls, args: Any, device_type: str, world_size: int = 1, rank: int = 0) -> "MemoryReport":
        """From a program's parsed flags: batch_size (global), lr, amp ('' = fp32), and where the program has
        them img_size and channels_last; device_type 'cuda' / 'cpu'; world_size / rank: torchrun's."""
        batch_size, lr, amp = args.batch_size, args.lr, args.amp
        img_size, channels_last = getattr(args, "img_size", None), getattr(args, "channels_last", None)
        settings = [f"batch {batch_size} on {world_size} process{'es' if world_size > 1 else ''}"]
        if world_size > 1:
            settings[0] += f" (this is rank {rank})"
        if img_size is not None:
            settings.append(f"{img_size}x{img_size} images")
        settings.append(amp or "fp32")
        if channels_last is not None:
            settings.append("channels_last" if channels_last else "contiguous")
        remedies = [] if amp else ["--amp bf16 (activations in 16 bits)"]
        if channels_last is False:
            remedies.append("--channels_last")
        if batch_size >= 4:
            half = batch_size // 2
            remedies.append(f"--batch_size {half} --lr {lr * half / batch_size:.3g} (scale --lr with the batch: "
                            "nothing here scales it for you; the paper pairs batch 64 with lr 2.5e-4 and 256 with "
                            "1e-3)")
        remedies.append(f"torchrun --nproc_per_node N with N > {world_size} GPUs (--batch_size stays the global "
                        "batch, each GPU holds 1/N of it)")
        return cls(", ".join(settings), remedies, device_type == "cuda")

    def message(self, error: BaseException, phase: str, checkpoint: Optional[str] = None) -> str:
        """The one-line message for ``error`` (an out-of-memory error) raised in ``phase``; ``checkpoint``:
        the run's newest checkpoint of completed training, named in the --resume command (None: none yet)."""
        detail = pytorch_detail(error)
        settings = "; ".join(part for part in (self.settings, detail and f"PyTorch: {detail}") if part)
        where = f"out of {'GPU ' if self.on_gpu else ''}memory in {phase}" + (f" ({settings})" if settings else "")
        message = f"{where}; try {', or '.join(self.remedies)}"
        if checkpoint:
            message += f"; then resume with --resume {checkpoint} and the changed flags"
        return message


def is_out_of_memory(error: BaseException) -> bool:
    """True for PyTorch's out-of-memory error (torch.OutOfMemoryError, torch.cuda.OutOfMemoryError in
    older versions) and for the RuntimeErrors cuBLAS / cuDNN raise when their workspace cannot be allocated."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(error, oom_type):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("CUDA error: out of memory" in text or "ALLOC_FAILED" in text)


def pytorch_detail(error: BaseException) -> str:
    """'tried to allocate 2.00 GiB, 1.75 MiB free of 79.15 GiB' from PyTorch's message ('' if absent)."""
    text = " ".join(str(error).split())
    parts = []
    asked = re.search(r"Tried to allocate ([\d.]+ \w+)", text)
    if asked:
        parts.append(f"tried to allocate {asked.group(1)}")
    free = re.search(r"total capacity of ([\d.]+ \w+) of which ([\d.]+ \w+) is free", text)
    if free:
        parts.append(f"{free.group(2)} free of {free.group(1)}")
    return ", ".join(parts)
