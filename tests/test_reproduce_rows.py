"""The rows' train.py flags against the published README's commands (tests/fixtures/published_commands.json),
the --published_quirks rows, and every row's command parsed by the real train.py parsers."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ranksim.harness.paper import BENCHMARKS, COMPARATOR_GROUPS, PUBLISHED_QUIRKS_FLAG, ROWS

REPO = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((REPO / "tests" / "fixtures" / "published_commands.json").read_text())
COMMANDS = FIXTURE["commands"]
# The paper's rows (the later methods' rows appended by ranksim/harness/paper.py have no published RankSim command)
PAPER_ROWS = {d: [r for r in ROWS[d] if r.group not in COMPARATOR_GROUPS] for d in ROWS}


def as_flags(tokens):
    """{name: value} of a flag list, written independently of ranksim.harness.paper: ``--x=v`` and ``--x v`` give
    v, a switch gives True; numbers compare by value."""
    out, i = {}, 0
    while i < len(tokens):
        name, _, inline = tokens[i][2:].partition("=")
        if inline:
            value, i = inline, i + 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            value, i = tokens[i + 1], i + 2
        else:
            value, i = True, i + 1
        if value is not True:
            try:
                value = float(value)
            except ValueError:
                pass
        out[name] = value
    return out


def published(dataset, name):
    return as_flags(shlex.split(COMMANDS[dataset][name]))


def union(*parts):
    """The README's rule for combined rows: the union of the parts' flags. Only the Vanilla command spells
    out ``--reweight none`` (the default); a combined row does not carry it."""
    merged = {}
    for part in parts:
        for name, value in part.items():
            if name in merged and merged[name] != value and "none" not in (merged[name], value):
                raise AssertionError(f"parts disagree on --{name}: {merged[name]} vs {value}")
            if value != "none" or name not in merged:
                merged[name] = value
    if merged.get("reweight") == "none":
        del merged["reweight"]
    return merged


def expected_flags(dataset, row):
    """The flags the published commands give ``row``: its own command, or the union of its parts'."""
    suffix = "+RankSim" if row.ranksim else ""
    base = row.name[: -len("+RankSim")] if row.ranksim else row.name
    own = {"Vanilla+RankSim": "RankSim"}.get(row.name, row.name)
    if own in COMMANDS[dataset]:
        return published(dataset, own)
    t = BENCHMARKS[dataset].reweight_title
    vanilla = published(dataset, "RankSim" if row.ranksim else "Vanilla")
    parts = [vanilla]
    for token in base.split("+"):
        if token == t:
            parts.append(published(dataset, t + suffix))
        elif token == "LDS":
            parts.append(published(dataset, f"{t}+LDS{suffix}"))
        elif token == "FDS":
            parts.append(published(dataset, "FDS" + suffix))
        elif token == "Focal-R":
            # The README gives Focal-R only with RankSim; without it, Yang et al.'s focal loss on Vanilla.
            parts.append(published(dataset, "Focal-R+RankSim") if row.ranksim
                         else {"loss": BENCHMARKS[dataset].focal_loss})
        elif token == "RRT":  # stage 2 (Yang et al.): retrain the head with the benchmark's re-weighting
            parts.append({"retrain_fc": True, "reweight": BENCHMARKS[dataset].reweight})
        else:
            raise AssertionError(f"unknown part {token} of {row.name}")
    return union(*parts)


@pytest.mark.parametrize("dataset", list(BENCHMARKS))
def test_every_row_carries_the_published_commands_flags(dataset):
    assert "9e1c862" in FIXTURE["source"]
    for row in PAPER_ROWS[dataset]:
        flags = [f for f in row.flags if f != PUBLISHED_QUIRKS_FLAG]
        assert as_flags(flags) == expected_flags(dataset, row), row.name


def test_published_kernels_and_batch_sizes_are_explicit():
    """The issue's cases, spelled out: LDS/FDS gaussian ks 5 sigma 2; IMDB-WIKI RankSim rows batch 256, lr 1e-3."""
    for dataset in BENCHMARKS:
        for row in PAPER_ROWS[dataset]:
            flags = as_flags(row.flags)
            if flags.get("lds"):
                assert (flags["lds_kernel"], flags["lds_ks"], flags["lds_sigma"]) == ("gaussian", 5, 2), row.name
            if flags.get("fds"):
                assert (flags["fds_kernel"], flags["fds_ks"], flags["fds_sigma"]) == ("gaussian", 5, 2), row.name
            if dataset == "imdb_wiki":
                assert (flags["batch_size"], flags["lr"]) == (256, 1e-3), row.name
            if dataset == "agedb":
                assert (flags["batch_size"], flags["lr"]) == ((64, 2.5e-4) if row.ranksim else (256, 1e-3)), row.name


def test_published_quirks_on_exactly_the_affected_rows():
    """--reweight inverse with --lds (integer-truncated smoothed counts), and age rows with a focal or Huber loss."""
    for dataset in BENCHMARKS:
        for row in ROWS[dataset]:
            flags = as_flags(row.flags)
            affected = (flags.get("reweight") == "inverse" and flags.get("lds") is True) or \
                (dataset != "sts-b" and flags.get("loss") in ("focal_l1", "focal_mse", "huber"))
            assert (PUBLISHED_QUIRKS_FLAG in row.flags) == affected, row.name
    with_quirks = {d: sorted(r.name for r in ROWS[d] if PUBLISHED_QUIRKS_FLAG in r.flags) for d in BENCHMARKS}
    assert len(with_quirks["agedb"]) == len(with_quirks["imdb_wiki"]) == 8  # Focal-R, +LDS, +FDS, +LDS+FDS, x2
    assert with_quirks["sts-b"] == sorted(f"{b}{s}" for b in ("INV+LDS", "INV+LDS+FDS", "Focal-R+LDS",
                                                                "Focal-R+LDS+FDS", "RRT+LDS", "RRT+LDS+FDS")
                                          for s in ("", "+RankSim"))


PARSE = {
    "agedb-dir": "from ranksim.harness.age_flags import build_parser; import train; p = build_parser(train.DEFAULTS)",
    "imdb-wiki-dir": "from ranksim.harness.age_flags import build_parser; import train; p = build_parser(train.DEFAULTS)",
    "sts-b-dir": "from ranksim.harness.stsb_flags import build_parser; import train; p = build_parser()",
}


def parse_with_train_parser(folder, argvs):
    """vars(parse_args(argv)) of ``folder``/train.py's own parser for each argv (one subprocess)."""
    code = (f"import json, sys; {PARSE[folder]}\n"
            "print(json.dumps([vars(p.parse_args(a)) for a in json.loads(sys.stdin.read())]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO / folder, input=json.dumps(argvs),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dataset", list(BENCHMARKS))
def test_every_row_command_parses_with_the_real_train_parser(dataset):
    """Each row's flags (and --seed) are flags of its train.py and parse to the row's values."""
    bench = BENCHMARKS[dataset]
    rows = ROWS[dataset]
    parsed = parse_with_train_parser(bench.folder, [list(r.flags) + ["--seed", "7"] for r in rows])
    for row, args in zip(rows, parsed):
        for name, value in as_flags(row.flags).items():
            assert args[name] == value, (row.name, name)
        assert args[bench.seed_arg] == 7
