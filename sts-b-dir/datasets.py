"""STS-B-DIR data: TSV loading, tokenization, vocabulary, GloVe embeddings, batching (docs/published_behaviour.md §8).

Pipeline (train.py calls these in order):
    splits = load_splits(data_dir, max_seq_len)            # {"train"|"val"|"test": PairSplit}
    vocab = build_vocab(splits, max_word_v_size)           # list of words, index = position
    emb = initial_embeddings(vocab, d_word, seed, glove)   # float32 [len(vocab), d_word] (GloVe or N(0, 1))
    data = PairDataset(splits["train"], vocab, weights)    # items (ids1, ids2, score, weight)
    batches = rank_batches(len(data), batch_size, seed, epoch, world_size)  # one epoch's index batches
    inputs, scores, weights = collate_pairs([data[i] for i in ...])  # PairInputs (padded) + [B, 1]s
    loader = eval_loader(dataset, ctx)                     # in-order prediction batches (this rank's shard)

Tokenization. The published code used NLTK's ``word_tokenize``, which first splits a text into
sentences with the ``punkt`` model (an NLTK *data* download) and then runs NLTK's Treebank-style word
tokenizer on each sentence. Machines without internet must work, so we run the same word tokenizer
on the whole text (``word_tokenize(text, preserve_line=True)``), which needs no data. The two differ
only on texts that punkt splits into several sentences: there word_tokenize also splits off the
period that ends each inner sentence ("went home. He" -> "home", ".", "He"), while we keep it on the
word ("home.", "He"); the text's final period is split off by both. Fewer than 1% of the STS-B-DIR
sentences (125 of 14,498 in RankSim's files) even contain a period followed by a capitalised word,
and most of those are abbreviations ("Mr. Feith", "U.S. Senate") that punkt does not split either.
"""
import csv
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from nltk.tokenize import word_tokenize

from ranksim.harness.cli import UserError
from ranksim.harness.distributed import DistContext, split_sizes

PADDING = "@@PADDING@@"  # index 0: all-zero embedding, masked out of the LSTM and the pooling
UNKNOWN = "@@UNKNOWN@@"  # index 1: every word outside the vocabulary
PAD_INDEX, UNK_INDEX = 0, 1

SPLIT_FILES = {"train": "train_new.tsv", "val": "dev_new.tsv", "test": "test_new.tsv"}
NUM_COLUMNS = 10  # index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score
SENTENCE1_COLUMN, SENTENCE2_COLUMN, SCORE_COLUMN = 7, 8, 9
MAX_SCORE = 5.0

HOW_TO_GET_DATA = (
    "download the published files with `python data/download_sts_b_dir.py` "
    "or build them with `python data/create_sts_b_dir.py` (see sts-b-dir/README.md)"
)
HOW_TO_GET_GLOVE = "download it with `python glove/download_glove.py` or pass --word_embs_file"


def tokenize(text: str, max_seq_len: int) -> List[str]:
    """NLTK word tokens of ``text`` without the punkt sentence split (module docstring), first max_seq_len."""
    return word_tokenize(text, preserve_line=True)[:max_seq_len]


@dataclass
class PairSplit:
    """One split: tokenized sentence pairs and their similarity scores (floats in [0, 5])."""

    path: str
    sentences1: List[List[str]] = field(default_factory=list)
    sentences2: List[List[str]] = field(default_factory=list)
    scores: List[float] = field(default_factory=list)
    skipped: int = 0  # rows with an empty score or a sentence with no tokens

    def __len__(self) -> int:
        return len(self.scores)


def read_pair_tsv(path: "str | os.PathLike", max_seq_len: int) -> PairSplit:
    """Read one STS-B-DIR TSV (header row, 10 tab-separated columns, docs/published_behaviour.md §8) into a PairSplit.

    Rows with an empty score or a sentence that tokenizes to nothing are skipped (as published) and
    counted in ``skipped``. Raises UserError naming the file (and line) for: a missing file, a byte that
    is not UTF-8, a wrong column count, a score that is not a number or lies outside [0, 5], and a file
    with no usable rows.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"STS-B-DIR file not found: {path}; {HOW_TO_GET_DATA}")
    split = PairSplit(path=path)
    try:
        read_rows(path, max_seq_len, split)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}, line {first_non_utf8_line(path)}: not valid UTF-8 ({exc.reason}, byte "
                        f"{exc.object[exc.start:exc.start + 1]!r}); re-save the file as UTF-8 or get a fresh copy: "
                        f"{HOW_TO_GET_DATA}") from None
    if len(split) == 0:
        raise UserError(
            f"{path}: no sentence pairs (empty split after skipping {split.skipped} rows without a score "
            f"or without tokens); {HOW_TO_GET_DATA}"
        )
    return split


def first_non_utf8_line(path: str) -> int:
    """1-based number of the first line of ``path`` that is not valid UTF-8 (0 if none)."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return line_number
    return 0


def read_rows(path: str, max_seq_len: int, split: PairSplit) -> None:
    """The rows of read_pair_tsv's file into ``split`` (UnicodeDecodeError for a non-UTF-8 byte)."""
    with open(path, encoding="utf-8", newline="") as f:
        # QUOTE_NONE: sentences contain bare quote characters that are text, not CSV quoting.
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for line_number, row in enumerate(reader, start=1):
            if line_number == 1 or (len(row) == 0):
                continue  # header; a blank line (e.g. at the end of the file)
            if len(row) != NUM_COLUMNS:
                raise UserError(
                    f"{path}, line {line_number}: {len(row)} tab-separated columns, expected {NUM_COLUMNS} "
                    "(index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, "
                    f"score); fix the file or get a fresh copy: {HOW_TO_GET_DATA}"
                )
            score_text = row[SCORE_COLUMN].strip()
            if score_text == "":
                split.skipped += 1
                continue
            try:
                score = float(score_text)
            except ValueError:
                raise UserError(
                    f"{path}, line {line_number}: score {score_text!r} is not a number; "
                    "the last column must be a similarity score in [0, 5]"
                ) from None
            if not 0.0 <= score <= MAX_SCORE:  # also rejects nan
                raise UserError(
                    f"{path}, line {line_number}: score {score_text} is outside [0, 5]; "
                    "STS-B similarity scores lie in [0, 5]"
                )
            tokens1 = tokenize(row[SENTENCE1_COLUMN], max_seq_len)
            tokens2 = tokenize(row[SENTENCE2_COLUMN], max_seq_len)
            if not tokens1 or not tokens2:
                split.skipped += 1
                continue
            split.sentences1.append(tokens1)
            split.sentences2.append(tokens2)
            split.scores.append(score)


def load_splits(data_dir: "str | os.PathLike", max_seq_len: int) -> Dict[str, PairSplit]:
    """Read train_new.tsv, dev_new.tsv and test_new.tsv from data_dir -> {"train", "val", "test"}."""
    return {name: read_pair_tsv(Path(data_dir) / file, max_seq_len) for name, file in SPLIT_FILES.items()}


def build_vocab(splits: Dict[str, PairSplit], max_word_v_size: int) -> List[str]:
    """Word list [PADDING, UNKNOWN, w_0, w_1, ...]: the index of a word is its position (docs/published_behaviour.md §8).

    Words are counted over train sentence1s, train sentence2s, dev s1, dev s2, test s1, test s2 (in that
    order) and sorted by count, descending, ties in first-seen order; at most max_word_v_size words
    follow the two special entries (so the list holds at most max_word_v_size + 2 entries).
    """
    counts: Counter = Counter()
    for name in ("train", "val", "test"):
        for sentences in (splits[name].sentences1, splits[name].sentences2):
            for tokens in sentences:
                counts.update(tokens)
    # Counter keeps first-insertion order and sorted() is stable, so ties stay in first-seen order.
    words = sorted(counts, key=lambda word: -counts[word])[:max_word_v_size]
    return [PADDING, UNKNOWN] + [w for w in words if w not in (PADDING, UNKNOWN)]


def vocab_fingerprint(vocab: Sequence[str]) -> str:
    """sha256 (hex, 16 chars) of the word list; identifies a vocabulary in caches and checkpoints."""
    digest = hashlib.sha256("\n".join(vocab).encode("utf-8"))
    return digest.hexdigest()[:16]


def checkpoint_vocab_check(checkpoint: dict, vocab: Sequence[str], source: str) -> Optional[str]:
    """Our checkpoints record the vocabulary's fingerprint: refuse one built from other data (UserError).
    Returns a note to log for a checkpoint that records none (a published one), else None."""
    saved = checkpoint.get("vocab_fingerprint")
    if saved is None:
        return (f"note: {source} records no vocabulary (e.g. a published model_state_best.th); it must have been "
                "trained on these data files with the same --max_seq_len / --max_word_v_size")
    if saved != vocab_fingerprint(vocab):
        raise UserError(
            f"{source}: trained with another vocabulary (fingerprint {saved}, this data gives "
            f"{vocab_fingerprint(vocab)}); use the --data_dir, --max_seq_len and --max_word_v_size it was trained with")
    return None


# ----------------------------------------------------------------------------------------------- GloVe

# Part of the cache key: changes whenever read_glove_vectors reads a file differently (2: the last
# occurrence of a token wins, malformed lines are refused), so no cache of an older rule is reused.
GLOVE_READ_RULES = 2


def _glove_cache_path(glove_path: str, vocab: Sequence[str], d_word: int) -> Path:
    """Cache file next to the GloVe file, keyed by vocabulary, d_word, the GloVe file's size/mtime and
    the reading rules."""
    stat = os.stat(glove_path)
    key = hashlib.sha256(
        f"{vocab_fingerprint(vocab)}|{d_word}|{stat.st_size}|{int(stat.st_mtime)}|{GLOVE_READ_RULES}".encode()
    ).hexdigest()[:16]
    return Path(f"{glove_path}.vocab-{key}.pt")


def _vector_length_of(glove_path: str, sample_lines: int = 1000) -> int:
    """Most common number of fields minus one over the first lines (tokens with spaces are rare)."""
    lengths: Counter = Counter()
    with open(glove_path, "rb") as f:
        for _, line in zip(range(sample_lines), f):
            lengths[len(line.rstrip(b"\r\n").rstrip(b" ").split(b" ")) - 1] += 1
    if not lengths:
        raise UserError(f"GloVe file is empty: {glove_path}; {HOW_TO_GET_GLOVE}")
    return lengths.most_common(1)[0][0]


def check_glove_file(glove_path: "str | os.PathLike", d_word: int) -> None:
    """Fail early (before a run directory is made) when the GloVe file is missing or its vectors are not
    d_word long (judged from its first lines). Raises UserError saying how to fix it."""
    glove_path = os.fspath(glove_path)
    if os.path.isdir(glove_path) or not os.path.isfile(glove_path):
        raise UserError(f"GloVe file not found: {glove_path}; {HOW_TO_GET_GLOVE}")
    vector_length = _vector_length_of(glove_path)
    if vector_length != d_word:
        raise UserError(
            f"{glove_path}: GloVe vectors have {vector_length} numbers, but --d_word is {d_word}; "
            f"pass --d_word {vector_length} or a GloVe file with {d_word}-d vectors"
        )


def _is_number(field: bytes) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def parse_glove_line(line: bytes, d_word: int, where: str) -> Tuple[bytes, List[bytes]]:
    """(token, its d_word number fields) of one GloVe line, by the published rule: the LAST d_word
    space-separated fields are the vector and the fields before them, joined by single spaces, are
    the token (a few GloVe tokens contain spaces, e.g. ". . ."). The line end and trailing spaces
    are ignored. The fields are checked to be numbers by the caller (that needs the conversion anyway).

    Raises UserError naming ``where`` ("<file>, line <n>") for a line that cannot be read that way
    without guessing: fewer than d_word + 1 fields; or a token of several fields whose last field is
    a number, because such a line reads equally well as a token followed by d_word + 1 numbers (one
    number too many: a damaged line, which the rule alone would silently turn into a token "word 0.1").
    """
    fields = line.rstrip(b"\r\n").rstrip(b" ").split(b" ")
    if len(fields) < d_word + 1:
        raise UserError(
            f"{where}: {len(fields) - 1} numbers, expected a token and {d_word}; the file looks truncated "
            f"or is not a {d_word}-d GloVe text file; {HOW_TO_GET_GLOVE}"
        )
    token_fields = fields[:-d_word]
    if len(token_fields) > 1 and _is_number(token_fields[-1]):
        raise UserError(
            f"{where}: {len(fields)} fields and the field before the last {d_word} is the number "
            f"{token_fields[-1].decode('utf-8', 'replace')!r}, so the line holds one number too many (or a "
            "token ending in a number, which cannot be told apart); repair the line or get a fresh copy: "
            f"{HOW_TO_GET_GLOVE}"
        )
    return b" ".join(token_fields), fields[-d_word:]


def read_glove_vectors(glove_path: str, vocab: Sequence[str], d_word: int) -> Tuple[np.ndarray, np.ndarray]:
    """Read the GloVe text file once -> (vectors float32 [V, d_word] with zero rows for missing words,
    found bool [V]) for the words of ``vocab``.

    Every line is read by ``parse_glove_line`` and its d_word vector fields must all be numbers; a
    line breaking either rule stops with a UserError naming the file and line (a damaged file is
    reported, never half-read). A token that appears on several lines takes the vector of its LAST
    line, as the published code's dictionary does. Raises UserError when the vectors are not d_word long.
    """
    check_glove_file(glove_path, d_word)
    index_of = {word: i for i, word in enumerate(vocab)}
    vectors = np.zeros((len(vocab), d_word), dtype=np.float32)
    found = np.zeros(len(vocab), dtype=bool)
    with open(glove_path, "rb") as f:
        for line_number, line in enumerate(f, start=1):
            where = f"{glove_path}, line {line_number}"
            token_bytes, fields = parse_glove_line(line, d_word, where)
            try:
                vector = [float(x) for x in fields]
            except ValueError:
                raise UserError(
                    f"{where}: the last {d_word} fields are not all numbers; the file is not a {d_word}-d "
                    f"GloVe text file or is damaged; {HOW_TO_GET_GLOVE}"
                ) from None
            index = index_of.get(token_bytes.decode("utf-8", errors="replace"))
            if index is not None:
                vectors[index] = vector  # a later line of the same token overwrites: the last one wins
                found[index] = True
    return vectors, found


def load_glove_matrix(
    glove_path: "str | os.PathLike", vocab: Sequence[str], d_word: int, seed: int,
    use_cache: bool = True, log=print,
) -> Tuple[torch.Tensor, int]:
    """Embedding matrix float32 [len(vocab), d_word] and the number of words found in GloVe.

    Rows: GloVe vectors for the words GloVe has, N(0, 1) (numpy RNG seeded with ``seed``) for the
    others (the UNKNOWN entry included), zeros for PADDING (docs/published_behaviour.md §8). Reading the 5.6 GB GloVe text
    takes minutes, so the vocabulary-filtered vectors are cached next to it (``<glove>.vocab-<key>.pt``,
    key = hash of vocabulary, d_word and the GloVe file's size and mtime): later runs load in seconds.
    """
    glove_path = os.fspath(glove_path)
    check_glove_file(glove_path, d_word)
    cache_path = _glove_cache_path(glove_path, vocab, d_word)
    cached = None
    if use_cache and cache_path.is_file():
        try:
            cached = torch.load(cache_path, weights_only=True)
            vectors, found = cached["vectors"].numpy(), cached["found"].numpy()
            log(f"GloVe: vocabulary vectors from the cache {cache_path}")
        except Exception as exc:  # a damaged cache is re-derived from the GloVe text, and said so
            log(f"GloVe: cache {cache_path} unreadable ({type(exc).__name__}); re-reading {glove_path}")
            cached = None
    if cached is None:
        log(f"GloVe: reading {glove_path} (once; the vocabulary's vectors are then cached)")
        vectors, found = read_glove_vectors(glove_path, vocab, d_word)
        if use_cache:
            _save_cache(cache_path, vectors, found, log)
    matrix = np.random.default_rng(seed).standard_normal((len(vocab), d_word)).astype(np.float32)
    matrix[found] = vectors[found]
    matrix[PAD_INDEX] = 0.0
    return torch.from_numpy(matrix), int(found.sum())


def initial_embeddings(vocab: Sequence[str], d_word: int, seed: int, glove_path: Optional[str],
                       log: Callable[[str], None] = print) -> torch.Tensor:
    """The embedding matrix a fresh model starts from, float32 [len(vocab), d_word]: GloVe (glove_path,
    see load_glove_matrix) or, with glove_path None (--glove 0), N(0, 1) rows; the padding row zero either way."""
    if glove_path is not None:
        matrix, found = load_glove_matrix(glove_path, vocab, d_word, seed, log=log)
        log(f"GloVe: {found} of {len(vocab)} vocabulary entries found; the others are N(0, 1)")
        return matrix
    matrix = torch.randn(len(vocab), d_word, generator=torch.Generator().manual_seed(seed))
    matrix[PAD_INDEX] = 0.0
    return matrix


def _save_cache(cache_path: Path, vectors: np.ndarray, found: np.ndarray, log) -> None:
    """Write the cache atomically (temp file + rename); a read-only GloVe folder only costs speed."""
    tmp_path = cache_path.with_name(cache_path.name + f".tmp{os.getpid()}")
    try:
        torch.save({"vectors": torch.from_numpy(vectors), "found": torch.from_numpy(found)}, tmp_path)
        os.replace(tmp_path, cache_path)
    except OSError as exc:
        log(f"GloVe: could not write the cache {cache_path} ({exc}); the next run reads the text again")
        if tmp_path.exists():
            tmp_path.unlink()


# -------------------------------------------------------------------------------------- dataset / batches

def token_ids(tokens: Sequence[str], index_of: Dict[str, int]) -> List[int]:
    """Vocabulary indices of ``tokens`` (UNK_INDEX for words outside the vocabulary)."""
    return [index_of.get(token, UNK_INDEX) for token in tokens]


class PairDataset(torch.utils.data.Dataset):
    """Item i = (ids1 LongTensor [L1], ids2 LongTensor [L2], score float32 [1] in [0, 5], weight float32 [1])."""

    def __init__(self, split: PairSplit, vocab: Sequence[str], weights: Optional[np.ndarray] = None):
        index_of = {word: i for i, word in enumerate(vocab)}
        self.ids1 = [torch.tensor(token_ids(s, index_of), dtype=torch.long) for s in split.sentences1]
        self.ids2 = [torch.tensor(token_ids(s, index_of), dtype=torch.long) for s in split.sentences2]
        self.scores = np.asarray(split.scores, dtype=np.float32)
        self.weights = np.ones(len(split), np.float32) if weights is None else np.asarray(weights, np.float32)

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, i: int):
        return (self.ids1[i], self.ids2[i], torch.tensor([self.scores[i]]), torch.tensor([self.weights[i]]))


@dataclass
class PairInputs:
    """The model inputs of a padded batch. tokens*: LongTensor [B, T*] (PAD_INDEX after each sentence's
    end); lengths*: LongTensor [B], kept on the CPU (pack_padded_sequence wants them there)."""

    tokens1: torch.Tensor
    lengths1: torch.Tensor
    tokens2: torch.Tensor
    lengths2: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> "PairInputs":
        """Move the token tensors to ``device`` (like Tensor.to, so generic batch loops can call it)."""
        return PairInputs(self.tokens1.to(device, non_blocking=non_blocking), self.lengths1,
                          self.tokens2.to(device, non_blocking=non_blocking), self.lengths2)

    def __len__(self) -> int:
        return self.tokens1.shape[0]


def collate_pairs(items) -> Tuple[PairInputs, torch.Tensor, torch.Tensor]:
    """Stack PairDataset items -> (PairInputs, scores float32 [B, 1] in [0, 5], weights float32 [B, 1]).

    Same (inputs, labels, weights) triple as the image benchmarks' batches, so the package's
    prediction and FDS-statistics loops (ranksim.harness.loop) run on it unchanged.
    """
    ids1, ids2, scores, weights = zip(*items)
    pad = torch.nn.utils.rnn.pad_sequence
    inputs = PairInputs(
        tokens1=pad(ids1, batch_first=True, padding_value=PAD_INDEX),
        lengths1=torch.tensor([len(x) for x in ids1]),
        tokens2=pad(ids2, batch_first=True, padding_value=PAD_INDEX),
        lengths2=torch.tensor([len(x) for x in ids2]),
    )
    return inputs, torch.stack(scores), torch.stack(weights)


# ----------------------------------------------------------------------------------------- batch order

EVAL_BATCH_SIZE = 128  # prediction passes only (no gradient); results do not depend on it


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> List[np.ndarray]:
    """Index batches of one epoch: a permutation drawn from (seed, epoch) alone, so a resumed run
    replays exactly the batches the interrupted one would have seen. The last batch may be smaller."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_samples, generator=generator).numpy()
    return [order[i:i + batch_size] for i in range(0, num_samples, batch_size)]


def rank_batches(num_samples: int, batch_size: int, seed: int, epoch: int, world_size: int) -> List[np.ndarray]:
    """epoch_batches; under torchrun without a last batch smaller than the number of processes (a rank
    would get no pair)."""
    return [b for b in epoch_batches(num_samples, batch_size, seed, epoch) if len(b) >= world_size]


def rank_share(batch: np.ndarray, ctx: DistContext) -> Tuple[np.ndarray, Optional[List[int]]]:
    """This rank's contiguous slice of a global batch of indices -> (indices, sizes of every rank's
    slice; None for a single process)."""
    if not ctx.distributed:
        return batch, None
    sizes = split_sizes(len(batch), ctx.world_size)
    start = sum(sizes[:ctx.rank])
    return batch[start:start + sizes[ctx.rank]], sizes


def eval_loader(dataset: PairDataset, ctx: DistContext) -> torch.utils.data.DataLoader:
    """In-order prediction loader; under torchrun over this rank's shard (DistributedSampler pads the
    shards with a few repeated pairs, which gather_predictions / fds_gather drop again)."""
    sampler = None
    if ctx.distributed:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                                      shuffle=False)
    return torch.utils.data.DataLoader(dataset, batch_size=EVAL_BATCH_SIZE, collate_fn=collate_pairs, sampler=sampler)
