"""STS-B-DIR data pipeline and model: TSV loading, tokenization, vocabulary order, GloVe parsing and
cache, the published state_dict keys, padding masking, shot groups and the early-stop rule.

Everything here runs in-process on tiny hand-built inputs (no downloads, no NLTK data).
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from folder_modules import load_folder_module

from ranksim.harness.cli import UserError

ROOT = Path(__file__).resolve().parents[1]
STSB_DIR = ROOT / "sts-b-dir"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"

stsb_data = load_folder_module("stsb_datasets", STSB_DIR / "datasets.py")
stsb_models = load_folder_module("stsb_models", STSB_DIR / "models.py")


def write_tsv(path: Path, rows, header: str = HEADER) -> Path:
    """rows: (sentence1, sentence2, score string) or full lists of columns."""
    lines = [header]
    for i, row in enumerate(rows):
        if isinstance(row, tuple):
            s1, s2, score = row
            row = [str(i), "main-captions", "f", "2012", f"{i:04d}", "none", "none", s1, s2, score]
        lines.append("\t".join(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine's 2 cores are shared: one intra-op thread is far faster for these tiny LSTMs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------- tokenization

def test_tokenize_needs_no_nltk_data_and_truncates(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])  # an empty NLTK data folder: no punkt
    with pytest.raises(LookupError):
        nltk.word_tokenize("Plain word_tokenize needs punkt.")  # proves no punkt data is reachable
    tokens = stsb_data.tokenize('A man isn\'t "playing" the U.S. guitar, is he?', 40)
    assert tokens == ["A", "man", "is", "n't", "``", "playing", "''", "the", "U.S.", "guitar", ",", "is", "he", "?"]
    assert stsb_data.tokenize("one two three four five", 3) == ["one", "two", "three"]


def test_tokenize_splits_only_the_final_period():
    # documented difference from word_tokenize with punkt: an inner sentence's period stays on its word
    assert stsb_data.tokenize("He went home. She stayed.", 40) == ["He", "went", "home.", "She", "stayed", "."]


# ------------------------------------------------------------------------------------------ TSV loading

def test_read_pair_tsv_skips_empty_scores_and_empty_sentences(tmp_path):
    path = write_tsv(tmp_path / "train_new.tsv", [
        ("A dog runs.", "A dog is running.", "4.200"),
        ("No score here.", "None.", ""),
        ("   ", "Empty first sentence.", "1.0"),
        ("Two cats.", "Two  cats .", "5"),
    ])
    split = stsb_data.read_pair_tsv(path, max_seq_len=40)
    assert split.scores == [4.2, 5.0]
    assert split.sentences1 == [["A", "dog", "runs", "."], ["Two", "cats", "."]]
    assert split.sentences2[0] == ["A", "dog", "is", "running", "."]
    assert split.skipped == 2


@pytest.mark.parametrize("rows, message", [
    ([("a b", "c d", "5.5")], "line 2: score 5.5 is outside [0, 5]"),
    ([("a b", "c d", "1.0"), ("a b", "c d", "-0.1")], "line 3: score -0.1 is outside [0, 5]"),
    ([("a b", "c d", "high")], "line 2: score 'high' is not a number"),
    ([("a b", "c d", "nan")], "line 2: score nan is outside [0, 5]"),
    ([["0", "g", "f", "y", "o", "s1", "s2", "only nine", "2.0"]], "line 2: 9 tab-separated columns, expected 10"),
    ([], "no sentence pairs (empty split"),
    ([("a b", "c d", "")], "no sentence pairs (empty split after skipping 1 rows"),
])
def test_bad_tsv_is_a_user_error_naming_file_and_line(tmp_path, rows, message):
    path = write_tsv(tmp_path / "dev_new.tsv", rows)
    with pytest.raises(UserError) as err:
        stsb_data.read_pair_tsv(path, 40)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_tsv_says_how_to_get_it(tmp_path):
    write_tsv(tmp_path / "train_new.tsv", [("a b", "c d", "1.0")])
    write_tsv(tmp_path / "dev_new.tsv", [("a b", "c d", "1.0")])
    with pytest.raises(UserError, match=r"STS-B-DIR file not found: .*test_new.tsv; download .*download_sts_b_dir"):
        stsb_data.load_splits(tmp_path, 40)


def test_published_split_sizes_and_test_groups_from_the_fixture_scores(tmp_path):
    """RankSim's STS-B-DIR files hold 5,249 / 1,000 / 1,000 pairs with test groups 775 / 175 / 50 (docs/published_behaviour.md §5).

    The fixture has every split's score strings and counts (derived from the published files by
    tests/fixtures/make_fixtures.py); we write TSVs with those scores and run the real loader."""
    counts = json.loads((FIXTURES / "stsb_labels.json").read_text())["counts"]
    for split, file in (("train", "train_new.tsv"), ("dev", "dev_new.tsv"), ("test", "test_new.tsv")):
        rows = [("A man plays.", "A man is playing.", score)
                for score, n in counts[split].items() for _ in range(n)]
        write_tsv(tmp_path / file, rows)
    splits = stsb_data.load_splits(tmp_path, 40)
    assert {k: len(v) for k, v in splits.items()} == {"train": 5249, "val": 1000, "test": 1000}
    # the fixed bin lists, binned with float32 np.histogram edges as the published code does
    scores = np.asarray(splits["test"].scores, dtype=np.float32)
    edges = np.histogram_bin_edges(np.empty(0, np.float32), bins=50, range=(0, 5)).astype(np.float32)
    bins = np.minimum(np.searchsorted(edges, scores, side="right") - 1, 49)
    many = [0, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 49]
    medium = [2, 4, 6, 8, 27, 35, 37]
    expected = {"many": int(np.isin(bins, many).sum()), "medium": int(np.isin(bins, medium).sum())}
    assert expected == {"many": 775, "medium": 175}
    from ranksim.metrics import stsb_shot_groups

    groups = stsb_shot_groups(scores)
    assert {k: int(v.sum()) for k, v in groups.items()} == {"many": 775, "medium": 175, "few": 50}


# ----------------------------------------------------------------------------------------- vocabulary

def _split(s1, s2, scores=None):
    return stsb_data.PairSplit("x", [t.split() for t in s1], [t.split() for t in s2], scores or [1.0] * len(s1))


def test_vocabulary_counts_in_the_published_order_with_first_seen_ties():
    splits = {
        "train": _split(["b a", "c"], ["d d"]),   # train s1: b a c ; train s2: d d
        "val": _split(["e a"], ["f"]),            # dev s1: e a ; dev s2: f
        "test": _split(["g"], ["c e"]),           # test s1: g ; test s2: c e
    }
    # counts: a 2, c 2, d 2, e 2, b 1, f 1, g 1; first seen: b a c d e f g
    vocab = stsb_data.build_vocab(splits, max_word_v_size=30000)
    assert vocab == ["@@PADDING@@", "@@UNKNOWN@@", "a", "c", "d", "e", "b", "f", "g"]
    assert stsb_data.build_vocab(splits, max_word_v_size=3) == ["@@PADDING@@", "@@UNKNOWN@@", "a", "c", "d"]


def test_token_ids_and_batches_pad_with_zero_and_map_unknown_words_to_one():
    vocab = ["@@PADDING@@", "@@UNKNOWN@@", "a", "b"]
    data = stsb_data.PairDataset(_split(["a b zz", "b"], ["a", "zz a"], [5.0, 0.4]), vocab, weights=[2.0, 0.5])
    inputs, scores, weights = stsb_data.collate_pairs([data[0], data[1]])
    assert inputs.tokens1.tolist() == [[2, 3, 1], [3, 0, 0]] and inputs.lengths1.tolist() == [3, 1]
    assert inputs.tokens2.tolist() == [[2, 0], [1, 2]] and inputs.lengths2.tolist() == [1, 2]
    assert scores.tolist() == [[5.0], [pytest.approx(0.4)]] and weights.tolist() == [[2.0], [0.5]]


# ----------------------------------------------------------------------------------------------- GloVe

def write_glove(path: Path, entries) -> Path:
    path.write_text("".join(token + " " + " ".join(str(x) for x in vec) + "\n" for token, vec in entries),
                    encoding="utf-8")
    return path


def test_glove_matrix_tokens_with_spaces_unknown_words_and_padding(tmp_path):
    glove = write_glove(tmp_path / "glove.txt", [
        (",", [0.5, -1.0, 2.0]),
        ("new york", [1.0, 2.0, 3.0]),     # a token with a space: the last 3 fields are the vector
        ("cat", [4.0, 5.0, 6.0]),
        ("cat", [9.0, 9.0, 9.0]),          # duplicate: the last occurrence wins (as published)
        ("dog", [7.0, 8.0, 9.0]),          # not in the vocabulary
        (". . .", [-1.0, -2.0, -3.0]),
    ])
    vocab = ["@@PADDING@@", "@@UNKNOWN@@", "cat", "new york", "zebra", ",", ". . ."]
    matrix, found = stsb_data.load_glove_matrix(glove, vocab, d_word=3, seed=7, log=lambda m: None)
    assert matrix.dtype == torch.float32 and matrix.shape == (7, 3) and found == 4
    assert matrix[0].tolist() == [0.0, 0.0, 0.0]
    assert matrix[2].tolist() == [9.0, 9.0, 9.0] and matrix[3].tolist() == [1.0, 2.0, 3.0]
    assert matrix[5].tolist() == [0.5, -1.0, 2.0] and matrix[6].tolist() == [-1.0, -2.0, -3.0]
    # unknown entry and a word GloVe lacks: N(0, 1) rows from numpy's generator seeded with the seed
    normal = np.random.default_rng(7).standard_normal((7, 3)).astype(np.float32)
    np.testing.assert_array_equal(matrix[1].numpy(), normal[1])
    np.testing.assert_array_equal(matrix[4].numpy(), normal[4])


def test_glove_cache_is_used_by_the_second_load(tmp_path, monkeypatch):
    glove = write_glove(tmp_path / "glove.txt", [("a", [1.0, 2.0]), ("b", [3.0, 4.0])])
    vocab = ["@@PADDING@@", "@@UNKNOWN@@", "b", "c"]
    first, _ = stsb_data.load_glove_matrix(glove, vocab, 2, seed=0, log=lambda m: None)
    caches = list(tmp_path.glob("glove.txt.vocab-*.pt"))
    assert len(caches) == 1

    def fail(*args, **kwargs):
        raise AssertionError("the GloVe text was read again")

    monkeypatch.setattr(stsb_data, "read_glove_vectors", fail)
    second, found = stsb_data.load_glove_matrix(glove, vocab, 2, seed=0, log=lambda m: None)
    assert torch.equal(first, second) and found == 1
    # another vocabulary has another cache key (so it reads the text)
    with pytest.raises(AssertionError, match="read again"):
        stsb_data.load_glove_matrix(glove, vocab + ["d"], 2, seed=0, log=lambda m: None)


def test_glove_with_other_vector_length_is_a_user_error(tmp_path):
    glove = write_glove(tmp_path / "glove.txt", [("a", [1.0, 2.0, 3.0, 4.0]), ("b", [1.0, 2.0, 3.0, 4.0])])
    with pytest.raises(UserError, match=r"GloVe vectors have 4 numbers, but --d_word is 3; pass --d_word 4"):
        stsb_data.load_glove_matrix(glove, ["@@PADDING@@", "@@UNKNOWN@@", "a"], 3, seed=0, log=lambda m: None)
    short = tmp_path / "short.txt"
    short.write_text("a 1 2 3\nb 1 2 3\nc 1 2\n")
    with pytest.raises(UserError, match=r"short.txt, line 3: 2 numbers, expected a token and 3"):
        stsb_data.load_glove_matrix(short, ["@@PADDING@@", "@@UNKNOWN@@", "a"], 3, seed=0, log=lambda m: None)


GLOVE_VOCAB = ["@@PADDING@@", "@@UNKNOWN@@", "cat", "dog"]


def read_tiny_glove(path, text, d_word=3):
    path.write_text(text, encoding="utf-8")
    return stsb_data.load_glove_matrix(path, GLOVE_VOCAB, d_word, seed=0, use_cache=False, log=lambda m: None)


def test_glove_duplicates_last_line_wins_and_trailing_spaces_are_ignored(tmp_path):
    matrix, found = read_tiny_glove(tmp_path / "g.txt", "cat 1 2 3\ndog 4 5 6 \nx y 0 0 0\ncat 7 8 9\r\n")
    assert found == 2
    assert matrix[2].tolist() == [7.0, 8.0, 9.0] and matrix[3].tolist() == [4.0, 5.0, 6.0]


@pytest.mark.parametrize("bad_line,message", [
    # one number too many: the token would be "dog 4" -> refused, not read as a new word
    ("dog 4 5 6 7", r"line 2: 5 fields and the field before the last 3 is the number '4', so the line holds "
                    r"one number too many"),
    ("dog 4 x 6", r"line 2: the last 3 fields are not all numbers"),
    ("dog 4 5", r"line 2: 2 numbers, expected a token and 3"),
    ("dog 4  6", r"line 2: the last 3 fields are not all numbers"),  # a doubled space leaves an empty field
])
def test_malformed_glove_line_is_a_one_line_error_naming_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "g.txt"
    # the bad line's token need not be in the vocabulary: the whole file is checked
    for token in ("dog", "zebra"):
        with pytest.raises(UserError, match=re.escape(str(path)) + ", " + message.replace("dog", token)) as err:
            read_tiny_glove(path, f"cat 1 2 3\n{bad_line.replace('dog', token)}\ncat 1 2 3\ncat 1 2 3\n")
        assert "\n" not in str(err.value) and "download_glove.py" in str(err.value)


def test_glove_cache_of_older_reading_rules_is_not_reused(tmp_path, monkeypatch):
    glove = write_glove(tmp_path / "glove.txt", [("cat", [1.0, 2.0, 3.0])])
    stsb_data.load_glove_matrix(glove, GLOVE_VOCAB, 3, seed=0, log=lambda m: None)
    monkeypatch.setattr(stsb_data, "GLOVE_READ_RULES", stsb_data.GLOVE_READ_RULES + 1)
    logs = []
    stsb_data.load_glove_matrix(glove, GLOVE_VOCAB, 3, seed=0, log=logs.append)
    assert any("reading" in line for line in logs) and not any("from the cache" in line for line in logs)


def test_missing_glove_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match=r"GloVe file not found: .*nope.txt; download it with .*download_glove"):
        stsb_data.load_glove_matrix(tmp_path / "nope.txt", ["@@PADDING@@"], 3, seed=0)


# ---------------------------------------------------------------------------------------------- model

def test_state_dict_keys_are_the_published_ones():
    lstm = [f"pair_encoder._phrase_layer._module.{kind}_l{layer}{suffix}"
            for layer in (0, 1) for suffix in ("", "_reverse") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    base = {"pair_encoder._text_field_embedder.token_embedder_words.weight", *lstm,
            "sts-b_pred_layer.weight", "sts-b_pred_layer.bias"}
    fds = {f"FDS.{name}" for name in ("epoch", "running_mean", "running_var", "running_mean_last_epoch",
                                      "running_var_last_epoch", "smoothed_mean_last_epoch",
                                      "smoothed_var_last_epoch", "num_samples_tracked")}
    plain = stsb_models.STSBModel(10, d_word=4, d_hid=3)
    assert set(plain.state_dict()) == base
    with_fds = stsb_models.STSBModel(10, d_word=4, d_hid=3, fds=True)
    assert set(with_fds.state_dict()) == base | fds
    assert with_fds.FDS.running_mean.shape == (50, 24)  # 50 buckets from 0, 8 * d_hid features
    sd = plain.state_dict()
    assert sd["sts-b_pred_layer.weight"].shape == (1, 24)
    assert sd["pair_encoder._phrase_layer._module.weight_ih_l1_reverse"].shape == (12, 6)
    # frozen embeddings by default (--train_words 0)
    assert not plain.pair_encoder._text_field_embedder.token_embedder_words.weight.requires_grad


def test_padding_is_masked_out_of_the_encoder_and_the_pooling():
    torch.manual_seed(0)
    model = stsb_models.STSBModel(12, d_word=5, d_hid=4).eval()
    encoder = model.pair_encoder
    alone = encoder.encode(torch.tensor([[3, 4, 5]]), torch.tensor([3]))
    # same sentence padded inside a batch with a longer one
    batch = encoder.encode(torch.tensor([[3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 10, 11]]), torch.tensor([3, 6]))
    torch.testing.assert_close(batch[0], alone[0])
    # independent reference: LSTM on the unpadded sentence, then max over its 3 steps
    embedded = encoder._text_field_embedder(torch.tensor([[3, 4, 5]]))
    out, _ = encoder._phrase_layer._module(embedded)
    torch.testing.assert_close(alone[0], out[0].max(dim=0).values)


def test_pair_features_and_outputs():
    torch.manual_seed(0)
    model = stsb_models.STSBModel(12, d_word=5, d_hid=4, return_features=True)
    inputs = stsb_data.PairInputs(torch.tensor([[3, 4, 0], [5, 6, 7]]), torch.tensor([2, 3]),
                                  torch.tensor([[8, 9], [10, 0]]), torch.tensor([2, 1]))
    model.eval()
    u = model.pair_encoder.encode(inputs.tokens1, inputs.lengths1)
    v = model.pair_encoder.encode(inputs.tokens2, inputs.lengths2)
    expected = torch.cat([u, v, (u - v).abs(), u * v], dim=1)
    pred = model(inputs)
    torch.testing.assert_close(pred, model.head(expected))
    model.train()
    pred, features = model(inputs, torch.tensor([[1.0], [4.0]]), 0)
    assert pred.shape == (2, 1) and features.shape == (2, 32)


# ------------------------------------------------------------------------------------- training rules

stsb_train = load_folder_module("stsb_train", STSB_DIR / "train.py")


@pytest.mark.parametrize("history, patience, stop", [
    ([1.0, 2.0, 3.0], 1, True),           # P = 2: 3.0 >= max(2.0, 3.0), history 3 > 2
    ([1.0, 3.0], 1, False),               # history not longer than P
    ([3.0, 1.0, 2.0], 1, True),           # 2.0 >= max(1.0, 2.0): worst of the last 2 (3.0 is older)
    ([3.0, 2.0, 1.0], 1, False),
    ([1.0, 2.0, 2.0], 1, True),           # ties count as worst
    ([5.0, 1.0, 4.0, 3.0], 2, False),     # P = 3: 3.0 < 4.0
    ([5.0, 1.0, 3.0, 4.0], 2, True),
    ([0.9] * 31, 30, False),              # published default: needs 32 checks
    ([0.9] * 32, 30, True),
])
def test_early_stop_rule(history, patience, stop):
    assert stsb_train.should_stop_early(history, patience) is stop


def test_epoch_batches_are_a_seeded_permutation():
    batches = stsb_data.epoch_batches(10, 4, seed=111, epoch=3)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    again = stsb_data.epoch_batches(10, 4, seed=111, epoch=3)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = stsb_data.epoch_batches(10, 4, seed=111, epoch=4)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))


def test_non_utf8_byte_names_the_file_and_line(tmp_path):
    path = write_tsv(tmp_path / "dev_new.tsv", [("A dog runs.", "A dog is running.", "4.2"),
                                                 ("Caf\u00e9 open.", "It is open.", "3.0")])
    data = path.read_bytes().replace("\u00e9".encode("utf-8"), b"\xe9")  # Latin-1 'e acute' on line 3
    path.write_bytes(data)
    with pytest.raises(UserError) as exc:
        stsb_data.read_pair_tsv(path, max_seq_len=40)
    message = str(exc.value)
    assert message.startswith(f"{path}, line 3: not valid UTF-8") and "\\xe9" in message and "\n" not in message
