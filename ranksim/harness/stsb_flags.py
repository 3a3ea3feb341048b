"""The command line of ``sts-b-dir/train.py``: flags, checks, names.

    args = parse_args(argv)        # the published flags (docs/published_behaviour.md §8)
    check_args(args, argv)         # one-line UserErrors; a bare --resume named; --resume/--evaluate adopt the
                                   # checkpoint's model flags

:func:`run_name` is the run-directory name the program uses without --store_name.
"""
import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

from ranksim.harness.checkpoint import check_checkpoint_flag, load_checkpoint
from ranksim.harness.cli import OneLineArgumentParser, UserError
from ranksim.harness.comparators import (
    SAMPLE_WEIGHTINGS,
    add_comparator_flags,
    check_comparator_flags,
    comparator_run_name,
)
from ranksim.harness.distributed import env_world_size
from ranksim.harness.flags import adopt_recorded_flags, check_method_flags, check_positive, explicit_flags
from ranksim.harness.run import BEST_NAME, CKPT_NAME, resolve_data_dir
from ranksim.losses import LOSSES

DATASET = "sts-b"
DESCRIPTION = ("Train and evaluate the STS-B-DIR BiLSTM regressor, with LDS / FDS / re-weighting / RankSim "
               "(docs/published_behaviour.md §8).")
RESUME_BY_NAME = True  # the value of a bare --resume: continue the run named by --store_name

# Settings that define the model (and its vocabulary) a checkpoint holds: --evaluate / --resume take
# them from the flags the checkpoint records (see adopt_checkpoint_settings).
SIZE_FLAGS = ("d_word", "d_hid", "n_layers_enc", "max_seq_len", "max_word_v_size")
MODEL_FLAGS = SIZE_FLAGS + ("fds", "fds_kernel", "fds_ks", "fds_sigma", "start_update", "start_smooth", "bucket_num",
                            "bucket_start", "fds_mmt")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              allow_abbrev=False)
    a = p.add_argument
    # data and embeddings
    a("--data_dir", default="./glue_data/STS-B", help="folder with train_new.tsv, dev_new.tsv, test_new.tsv")
    a("--word_embs_file", default="./glove/glove.840B.300d.txt", help="GloVe text file")
    a("--glove", type=int, default=1, choices=[0, 1], help="1: GloVe vectors; 0: random N(0,1) embeddings")
    a("--max_seq_len", type=int, default=40, help="tokens kept per sentence")
    a("--max_word_v_size", type=int, default=30000, help="vocabulary words (besides padding/unknown)")
    # model
    a("--d_word", type=int, default=300, help="word vector size")
    a("--train_words", type=int, default=0, choices=[0, 1], help="1: fine-tune the GloVe word embeddings "
      "(with --glove 0 the random embeddings are always trained, as published)")
    a("--d_hid", type=int, default=1500, help="LSTM hidden size per direction")
    a("--n_layers_enc", type=int, default=2, help="LSTM layers")
    a("--dropout", type=float, default=0.2, help="dropout on the embeddings and the LSTM outputs")
    # optimisation
    a("--optimizer", default="adam", choices=["adam", "sgd"])
    a("--lr", type=float, default=2.5e-4)
    a("--weight_decay", type=float, default=1e-5)
    a("--momentum", type=float, default=0.9, help="SGD momentum")
    a("--batch_size", type=int, default=16)
    a("--loss", default="mse", choices=sorted(LOSSES))
    a("--huber_beta", type=float, default=0.3, help="Huber loss threshold (on score / 5)")
    a("--max_grad_norm", type=float, default=5.0, help="gradient-norm clip (0: off)")
    a("--val_interval", type=int, default=400, help="iterations between validation checks")
    a("--max_vals", type=int, default=300, help="maximum number of validation checks")
    a("--patience", type=int, default=30, help="early stop: see docs/published_behaviour.md §8 (P = patience + 1)")
    # imbalance methods
    a("--reweight", default="none", choices=list(SAMPLE_WEIGHTINGS),
      help="cost-sensitive re-weighting (denseweight: DenseWeight, see --dw_alpha)")
    a("--lds", action="store_true", help="label distribution smoothing of the re-weighting")
    a("--lds_kernel", default="gaussian", choices=["gaussian", "triang", "laplace"])
    a("--lds_ks", type=int, default=5)
    a("--lds_sigma", type=float, default=2)
    a("--fds", action="store_true", help="feature distribution smoothing")
    a("--fds_kernel", default="gaussian", choices=["gaussian", "triang", "laplace"])
    a("--fds_ks", type=int, default=5)
    a("--fds_sigma", type=float, default=2)
    a("--start_update", type=int, default=0, help="first epoch whose features update the FDS statistics")
    a("--start_smooth", type=int, default=1, help="first epoch in which FDS smooths the features")
    a("--bucket_num", type=int, default=50)
    a("--bucket_start", type=int, default=0)
    a("--fds_mmt", type=float, default=0.9, help="FDS momentum")
    a("--regularization_weight", type=float, default=0.0, help="RankSim gamma (0: off)")
    a("--interpolation_lambda", type=float, default=1.0, help="RankSim lambda")
    a("--published_quirks", action="store_true", help="reproduce the published code's unintended behaviours: "
      "INV+LDS smooths integer counts (truncated); divergence limit 1e6 (see the README's differences table)")
    a("--retrain_fc", action="store_true", help="RRT: retrain only the head (needs --pretrained)")
    a("--pretrained", default="", help="checkpoint whose encoder RRT starts from")
    # runs
    a("--evaluate", action="store_true", help="only evaluate --eval_model on the test split")
    a("--eval_model", default="", help="checkpoint to evaluate (ours or a published model_state_best.th)")
    a("--resume", nargs="?", const=RESUME_BY_NAME, default="", metavar="CKPT",
      help="continue a run: --resume <run>/ckpt.pth.tar, or --resume alone (the published form) to continue "
      "<store_root>/<store_name>/ckpt.pth.tar")
    a("--store_root", default="checkpoint", help="folder of run directories")
    a("--store_name", default="", help="run directory name (default: derived from the settings)")
    a("--random_seed", "--seed", type=int, default=111, help="random seed (recorded as random_seed, the published name)")
    a("--gpu", type=int, default=None, help="CUDA device index (default: CUDA when available, else CPU)")
    a("--no_progress", action="store_true", help="no progress bars")
    a("--amp", default="", choices=["", "bf16", "fp16"], help="mixed-precision training (autocast; fp16 with loss "
      "scaling); RankSim, the loss, the head and the metrics stay float32")
    a("--compile", action="store_true", help="torch.compile the training forward (dynamic shapes: sentence lengths "
      "vary); the packed LSTM itself stays eager, so expect start-up cost rather than speed (bench/README.md)")
    # ConR's omega on the score / 5 targets: 0.04 = 0.2 score points, the step of most STS-B scores
    add_comparator_flags(p, with_rnc=False, conr_omega=0.04)
    return p


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The parsed flags (a bare --resume is True until :func:`check_args` names its checkpoint)."""
    return build_parser().parse_args(argv)


def check_args(args: argparse.Namespace, argv: Optional[Sequence[str]]) -> None:
    """Name the checkpoint of a bare --resume, take the model-defining flags from the --evaluate /
    --resume checkpoint, then refuse what cannot work (UserError). argv: the command line ``args`` was
    parsed from, to tell which flags were given."""
    resolve_resume_by_name(args)
    adopt_checkpoint_settings(args, explicit_flags(build_parser, argv))
    check_flag_values(args)


def resolve_resume_by_name(args: argparse.Namespace) -> None:
    """A bare --resume (the published form) -> args.resume = <store_root>/<store_name>/ckpt.pth.tar."""
    if args.resume is not RESUME_BY_NAME:
        return
    if not args.store_name:
        raise UserError("--resume without a checkpoint continues the run named by --store_name; pass "
                        f"--store_name <run name> or --resume <run>/{CKPT_NAME}")
    args.resume = str(Path(args.store_root) / args.store_name / CKPT_NAME)


def check_flag_values(args: argparse.Namespace) -> None:
    """UserError (one line: flag, value, fix) for flag combinations that cannot work."""
    check_positive(args, ("lr", "max_seq_len", "max_word_v_size", "d_word", "d_hid", "n_layers_enc", "batch_size",
                          "val_interval", "max_vals"))
    if args.patience < 0:
        raise UserError(f"--patience {args.patience}: must be 0 or more")
    if not 0 <= args.dropout < 1:
        raise UserError(f"--dropout {args.dropout}: must be in [0, 1)")
    check_method_flags(args)  # LDS / FDS / RankSim flags, shared with the image benchmarks
    if args.loss == "huber" and not args.huber_beta > 0:
        raise UserError(f"--huber_beta {args.huber_beta}: the Huber threshold must be > 0 (default 0.3)")
    if args.retrain_fc and not (args.pretrained or args.resume):
        raise UserError("--retrain_fc needs --pretrained <checkpoint> (the encoder to keep)")
    if args.pretrained and not args.retrain_fc:
        raise UserError("--pretrained is only used with --retrain_fc (RRT); to continue a run use --resume")
    if args.evaluate and not args.eval_model:
        raise UserError("--evaluate needs --eval_model <checkpoint>")
    if args.resume and (args.evaluate or args.pretrained):
        raise UserError("--resume continues a training run (it holds the whole model); "
                        "it cannot be combined with --evaluate or --pretrained")
    if args.pretrained:  # (--resume / --eval_model are checked where their settings are read)
        check_checkpoint_flag("--pretrained", args.pretrained, BEST_NAME)
    check_comparator_flags(args)
    if env_world_size() > 1 and (args.bmse != "none" or args.conr):
        raise UserError("--bmse / --conr: not supported under torchrun yet; run them in one process")


def adopt_checkpoint_settings(args: argparse.Namespace, explicit) -> None:
    """--evaluate --eval_model CKPT / --resume CKPT: MODEL_FLAGS from CKPT's recorded flags ('args', written
    by train.py; --evaluate only the SIZE_FLAGS: evaluation never applies FDS); a contradicting flag in
    ``explicit`` (given on the command line) is a UserError. A published model_state_best.th records none:
    the flags stay as passed, by default the paper's. --data_dir becomes absolute (the checkpoint's recorded
    folder unless given): :func:`~ranksim.harness.run.resolve_data_dir`."""
    flag, path = ("--eval_model", args.eval_model) if args.evaluate else ("--resume", args.resume)
    if not path:
        resolve_data_dir(args)
        return
    check_checkpoint_flag(flag, path, BEST_NAME if args.evaluate else CKPT_NAME)
    recorded = load_checkpoint(path).get("args")
    if isinstance(recorded, dict):
        adopt_recorded_flags(args, explicit, recorded, SIZE_FLAGS if args.evaluate else MODEL_FLAGS, f"{flag} {path}")
    resolve_data_dir(args, explicit, recorded if isinstance(recorded, dict) else None, f"{flag} {path}")


def run_name(args: argparse.Namespace) -> str:
    """Default run directory name: the settings that tell runs apart, and a timestamp."""
    parts = [DATASET, "bilstm"]
    if args.retrain_fc:
        parts.append("rrt")
    if args.reweight != "none":
        parts.append(args.reweight)
    if args.lds:
        parts.append(f"lds_{args.lds_kernel[:3]}_{args.lds_ks}_{args.lds_sigma:g}")
    if args.fds:
        parts.append(f"fds_{args.fds_kernel[:3]}_{args.fds_ks}_{args.fds_sigma:g}_{args.start_update}_"
                     f"{args.start_smooth}_{args.fds_mmt:g}")
    if args.regularization_weight > 0:
        parts.append(f"reg{args.regularization_weight:g}_il{args.interpolation_lambda:g}")
    parts += comparator_run_name(args)
    parts += [args.optimizer, args.loss, f"lr{args.lr:g}", f"bs{args.batch_size}", f"hid{args.d_hid}",
              time.strftime("%Y%m%d-%H%M%S")]
    return "_".join(parts)
