"""run_cli turns UserError into one stderr line + exit 2; other exceptions keep their traceback."""
import argparse
import subprocess
import sys
import textwrap

import pytest
from folder_modules import age_program

from ranksim.harness.cli import OneLineArgumentParser, UserError, check_file, run_cli


def run_script(body: str) -> subprocess.CompletedProcess:
    """Run a tiny program that calls run_cli; return the finished process (text stdout/stderr)."""
    code = "from ranksim.harness.cli import UserError, run_cli\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_user_error_is_one_line_and_exit_2():
    proc = run_script(
        """
        def main(path):
            print("working")
            raise UserError(f"{path}: no such split file;\\n  run `python data/create.py`")
        run_cli(main, "data/agedb.csv")
        """
    )
    assert proc.returncode == 2
    assert proc.stdout == "working\n"
    lines = proc.stderr.splitlines()
    assert lines == ["error: data/agedb.csv: no such split file; run `python data/create.py`"]
    assert "Traceback" not in proc.stderr


def test_bug_keeps_traceback():
    proc = run_script(
        """
        def main():
            raise ValueError("a bug")
        run_cli(main)
        """
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: a bug" in proc.stderr


def test_keyboard_interrupt_exit_130():
    proc = run_script(
        """
        def main():
            raise KeyboardInterrupt
        run_cli(main)
        """
    )
    assert proc.returncode == 130
    assert len(proc.stderr.splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_run_cli_passes_arguments_and_result():
    assert run_cli(lambda a, b: a + b, 2, 3) == 5


def test_run_cli_user_error_in_process_raises_system_exit_2(capsys):
    def main():
        raise UserError("bad --lr value 'x'; pass a number")

    with pytest.raises(SystemExit) as exc:
        run_cli(main)
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: bad --lr value 'x'; pass a number\n"


def test_check_file(tmp_path):
    present = tmp_path / "a.csv"
    present.write_text("age,path,split\n")
    check_file(present, "split file", "run prepare")  # no error
    missing = tmp_path / "b.csv"
    with pytest.raises(UserError) as exc:
        check_file(missing, "AgeDB split file", "run `python data/create_agedb.py`")
    assert str(exc.value) == f"AgeDB split file not found: {missing}; run `python data/create_agedb.py`"
    with pytest.raises(UserError, match="is a directory"):
        check_file(tmp_path, "split file", "run prepare")


def test_help_shows_every_default_of_the_training_and_data_programs():
    """-h of every train.py and data script: each flag with a default names it, as "(default: <value>)"
    right after the flag's own help text."""
    from pathlib import Path

    from ranksim.harness.age_flags import build_parser as age_parser
    from ranksim.harness.stsb_flags import build_parser as stsb_parser

    repo = Path(__file__).resolve().parents[1]
    for parser in (age_parser(age_program().DEFAULTS), stsb_parser()):
        help_text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.option_strings and action.default not in (None, argparse.SUPPRESS):
                assert f"(default: {action.default})" in help_text, action.option_strings
    for script in ["agedb-dir/data/create_agedb.py", "imdb-wiki-dir/data/download_imdb_wiki.py",
                   "sts-b-dir/data/create_sts_b_dir.py", "sts-b-dir/glove/download_glove.py"]:
        path = repo / script
        out = subprocess.run([sys.executable, path.name, "-h"], cwd=path.parent, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and "(default: " in " ".join(out.stdout.split()), (script, out.stderr)


def test_flag_without_help_text_shows_its_default(capsys):
    parser = OneLineArgumentParser(prog="x")
    parser.add_argument("--lr", type=float, default=2.5e-4)
    parser.add_argument("--name", default=None)
    parser.print_help()
    out = capsys.readouterr().out
    assert "--lr LR" in out and "(default: 0.00025)" in out and out.count("(default:") == 1
