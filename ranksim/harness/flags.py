"""Checks of the imbalanced-regression flags that every train.py shares (LDS, FDS, RankSim).

The training programs (``agedb-dir/train.py`` = ``imdb-wiki-dir/train.py``, and ``sts-b-dir/train.py``) have the same LDS/FDS/
RankSim flags, with dataset-dependent defaults. :func:`check_method_flags` turns values that cannot
work into one-line :class:`~ranksim.harness.cli.UserError`\\ s before anything is read or written; without
it they surfaced as a ValueError traceback from deep inside the library, after a run directory had
been made.

:func:`explicit_flags` and :func:`adopt_recorded_flags` let --evaluate / --resume take the settings that
define the model from the flags our checkpoints record ("args"): a flag left out takes the checkpoint's
value, a flag given with a contradicting value is refused.
"""
import argparse
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Set

from ranksim.harness.cli import UserError


def check_positive(args: argparse.Namespace, flags) -> None:
    """UserError "--<flag> <value>: must be > 0" for the first of ``flags`` (names of args attributes,
    e.g. ("lr", "batch_size")) whose value is not > 0 (NaN included); both train programs use it."""
    for flag in flags:
        value = getattr(args, flag)
        if not value > 0:
            raise UserError(f"--{flag} {value}: must be > 0")


def check_method_flags(args: argparse.Namespace) -> None:
    """UserError naming the flag and value when an LDS/FDS/RankSim flag cannot work.

    args: parsed flags with lds, reweight, lds_ks, lds_sigma, fds_ks, fds_sigma, bucket_start,
    bucket_num, fds_mmt, regularization_weight, interpolation_lambda (the names of docs/published_behaviour.md §7 and §8).
    """
    if args.lds and args.reweight == "none":
        raise UserError("--lds: label distribution smoothing smooths the re-weighting counts, so it needs "
                        "--reweight sqrt_inv or --reweight inverse")
    for flag in ("lds_ks", "fds_ks"):
        ks = getattr(args, flag)
        if ks < 1 or ks % 2 == 0:
            raise UserError(f"--{flag} {ks}: the kernel size must be a positive odd number (e.g. 5 or 9)")
    for flag in ("lds_sigma", "fds_sigma"):
        if not getattr(args, flag) > 0:
            raise UserError(f"--{flag} {getattr(args, flag)}: the kernel width must be > 0")
    if not args.bucket_num > 0:
        raise UserError(f"--bucket_num {args.bucket_num}: must be > 0")
    if not 0 <= args.bucket_start < args.bucket_num:
        raise UserError(f"--bucket_start {args.bucket_start}: must be in [0, --bucket_num {args.bucket_num})")
    num_buckets = args.bucket_num - args.bucket_start
    if args.fds and args.fds_ks // 2 >= num_buckets:  # FDS pads the bucket statistics by fds_ks // 2 (reflect)
        raise UserError(f"--fds_ks {args.fds_ks}: FDS smooths over --bucket_num - --bucket_start = {num_buckets} "
                        f"label buckets, too few for this kernel; use --fds_ks <= {2 * num_buckets - 1} or more "
                        "buckets")
    for flag in ("start_update", "start_smooth"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} {getattr(args, flag)}: must be an epoch number >= 0")
    if not 0 <= args.fds_mmt < 1:
        raise UserError(f"--fds_mmt {args.fds_mmt}: the momentum must be in [0, 1)")
    if not (args.regularization_weight >= 0 and math.isfinite(args.regularization_weight)):
        raise UserError(f"--regularization_weight {args.regularization_weight}: must be >= 0 (0 turns RankSim off)")
    if args.regularization_weight > 0 and not args.interpolation_lambda > 0:
        raise UserError(f"--interpolation_lambda {args.interpolation_lambda}: must be > 0 (the paper uses 2)")


def explicit_flags(make_parser: Callable[[], argparse.ArgumentParser], argv: Optional[Sequence[str]]) -> Set[str]:
    """Names (args attributes) of the flags written on the command line ``argv`` (None: sys.argv[1:]).

    A flag is explicit when it appears in argv, even with its default value: the command line is parsed
    again by a fresh parser from ``make_parser`` whose every default is argparse.SUPPRESS, so only the
    flags given on the command line end up in the namespace."""
    parser = make_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def adopt_recorded_flags(args: argparse.Namespace, explicit: Set[str], recorded: Mapping[str, Any],
                         flags: Sequence[str], source: str) -> None:
    """Set each of ``flags`` (the settings that define the model, e.g. model, img_size, FDS buckets) to the
    value ``recorded`` in a checkpoint's flags, so --evaluate / --resume rebuild the model it was trained
    as. A flag given explicitly (in ``explicit``) with another value is a UserError naming both values;
    a flag the checkpoint does not record keeps its command-line value (published checkpoints carry no
    flags: the defaults are the paper's). source: e.g. '--resume <path>' for the message."""
    for flag in flags:
        if flag not in recorded:
            continue
        value = recorded[flag]
        if flag in explicit and getattr(args, flag) != value:
            raise UserError(f"--{flag} {getattr(args, flag)}: {source} was trained with --{flag} {value}; leave "
                            f"--{flag} out (it is taken from the checkpoint) or pass --{flag} {value}")
        setattr(args, flag, value)
