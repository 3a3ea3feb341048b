"""agedb-dir/train.py and imdb-wiki-dir/train.py are one program: identical outside their dataset block."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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
