"""STS-B-DIR model: a BiLSTM sentence-pair encoder and a linear regression head (docs/published_behaviour.md §8).

    tokens1, tokens2 [B, T] --embedding (frozen GloVe) -> dropout -> 2-layer BiLSTM -> dropout
        -> max-pool over the real (unpadded) time steps -> u, v [B, 2*d_hid]
    pair features [u, v, |u - v|, u * v] [B, 8*d_hid]  (what RankSim and FDS see)
        -> (FDS smoothing in training) -> Linear(8*d_hid, 1) -> score / 5

Module names mirror the published AllenNLP 0.5 model so that ``state_dict()`` has exactly the
published keys and its checkpoint ``model_state_best.th`` loads (given its vocabulary):
    pair_encoder._text_field_embedder.token_embedder_words.weight
    pair_encoder._phrase_layer._module.{weight_ih,weight_hh,bias_ih,bias_hh}_l{0,1}[_reverse]
    FDS.*                            (only when built with FDS)
    sts-b_pred_layer.{weight,bias}   (a hyphen: registered with add_module, read with getattr)
"""
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ranksim.fds import FDS

HEAD_NAME = "sts-b_pred_layer"
STSB_FDS_BUCKET_NUM = 50  # the 50 LDS bins on [0, 5]
STSB_FDS_BUCKET_START = 0


class TextFieldEmbedder(nn.Module):
    """Word embeddings (named like AllenNLP's BasicTextFieldEmbedder with a 'words' token embedder)."""

    def __init__(self, num_words: int, d_word: int, padding_index: int = 0):
        super().__init__()
        self.token_embedder_words = nn.Embedding(num_words, d_word, padding_idx=padding_index)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens LongTensor [B, T] -> float [B, T, d_word]."""
        return self.token_embedder_words(tokens)


class Seq2SeqWrapper(nn.Module):
    """Holds the LSTM as ``_module`` (AllenNLP's PytorchSeq2SeqWrapper name) and handles padding."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        self._module = lstm

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """inputs [B, T, d_in], lengths LongTensor [B] (CPU) -> outputs [B, T, 2*d_hid], zeros at padding.

        Packing makes the LSTM skip the padding, so the backward direction starts at each sentence's
        last real token.
        """
        packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, _ = self._module(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=inputs.shape[1])
        return outputs


class PairEncoder(nn.Module):
    """Encodes both sentences with the shared BiLSTM and max-pools over time -> u, v [B, 2*d_hid]."""

    def __init__(self, num_words: int, d_word: int = 300, d_hid: int = 1500, n_layers: int = 2,
                 dropout: float = 0.2):
        super().__init__()
        self._text_field_embedder = TextFieldEmbedder(num_words, d_word)
        self._phrase_layer = Seq2SeqWrapper(
            nn.LSTM(d_word, d_hid, num_layers=n_layers, bidirectional=True, batch_first=True))
        self._dropout = nn.Dropout(dropout)  # no parameters, so no state_dict keys

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, T], lengths [B] -> sentence vectors [B, 2*d_hid] (max over the real time steps)."""
        embedded = self._dropout(self._text_field_embedder(tokens))
        outputs = self._dropout(self._phrase_layer(embedded, lengths))
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        padding = steps[None, :] >= lengths.to(tokens.device)[:, None]  # [B, T]
        return outputs.masked_fill(padding[:, :, None], float("-inf")).max(dim=1).values

    def forward(self, tokens1, lengths1, tokens2, lengths2) -> torch.Tensor:
        """Pair features [u, v, |u - v|, u * v]: float [B, 8*d_hid]."""
        # One LSTM call over both sides (2B sequences): same numbers as two calls, half the launches.
        width = max(tokens1.shape[1], tokens2.shape[1])
        pad = nn.functional.pad
        tokens = torch.cat([pad(tokens1, (0, width - tokens1.shape[1])), pad(tokens2, (0, width - tokens2.shape[1]))])
        sentence_vectors = self.encode(tokens, torch.cat([lengths1, lengths2]))
        u, v = sentence_vectors.chunk(2, dim=0)
        return torch.cat([u, v, (u - v).abs(), u * v], dim=1)


class STSBModel(nn.Module):
    """Pair encoder + optional FDS + linear head predicting score / 5.

    forward(inputs, scores=None, epoch=None):
      inputs: datasets.PairInputs (tokens1 [B, T1], lengths1 [B], tokens2 [B, T2], lengths2 [B]);
      scores: float [B, 1] similarity scores on [0, 5] (FDS buckets them into the 50 LDS bins);
      epoch: training epoch (FDS smooths from fds_kwargs['start_smooth'] on).
    Returns pred [B, 1] (score / 5); in training mode with FDS or ``return_features`` (RankSim),
    (pred, pair features [B, 8*d_hid]) - the features FDS smoothed in place, as published (docs/published_behaviour.md §3).
    """

    def __init__(self, num_words: int, d_word: int = 300, d_hid: int = 1500, n_layers: int = 2,
                 dropout: float = 0.2, fds: bool = False, return_features: bool = False,
                 train_words: bool = False, embeddings: Optional[torch.Tensor] = None, **fds_kwargs):
        super().__init__()
        self.pair_encoder = PairEncoder(num_words, d_word, d_hid, n_layers, dropout)
        word_embedding = self.pair_encoder._text_field_embedder.token_embedder_words
        if embeddings is not None:
            with torch.no_grad():
                word_embedding.weight.copy_(embeddings)
        word_embedding.weight.requires_grad_(train_words)
        self.feature_dim = 8 * d_hid
        self.return_features = return_features
        if fds:
            fds_kwargs.setdefault("bucket_num", STSB_FDS_BUCKET_NUM)
            fds_kwargs.setdefault("bucket_start", STSB_FDS_BUCKET_START)
            self.FDS = FDS(self.feature_dim, label_kind="stsb", **fds_kwargs)
        else:
            self.FDS = None
        self.add_module(HEAD_NAME, nn.Linear(self.feature_dim, 1))

    @property
    def head(self) -> nn.Linear:
        return getattr(self, HEAD_NAME)

    def forward(self, inputs, scores=None, epoch=None):
        features = self.pair_encoder(inputs.tokens1, inputs.lengths1, inputs.tokens2, inputs.lengths2)
        if self.training and self.FDS is not None and epoch is not None:
            if scores is None:
                raise ValueError("FDS smoothing needs the batch's scores (pass scores=...)")
            features = self.FDS.smooth(features, scores, epoch)  # identity before start_smooth
        pred = self.head(features)
        if self.training and (self.FDS is not None or self.return_features):
            return pred, features
        return pred
