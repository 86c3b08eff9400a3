"""Tokenized SFT records: every record's tokens and labels in flat arrays, with offsets.

The one representation that token scoring, token selection and fine-tuning share: record i
is `input_ids[offsets[i]:offsets[i + 1]]`; `labels` holds the token id where it is trained
and -100 elsewhere (system, user, role headers, dropped tokens), as transformers' loss
expects. Flat arrays keep a million records in a few arrays instead of a million lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE = -100  # the label of a token that is not trained (transformers' ignore_index)


@dataclass
class TokenizedSFT:
    """All records' tokens and labels, concatenated."""

    input_ids: np.ndarray  # (T,) int64
    labels: np.ndarray  # (T,) int64: the token id where trained, IGNORE elsewhere
    offsets: np.ndarray  # (N + 1,) int64: record i spans offsets[i]:offsets[i + 1]
    rows: np.ndarray  # (N,) int64: each record's row in the input it was made from
    stats: dict = field(default_factory=dict)  # truncated, dropped, ... (counts)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """(N,) tokens per record."""
        return np.diff(self.offsets)

    @property
    def record_of_token(self) -> np.ndarray:
        """(T,) the record each token belongs to."""
        return np.repeat(np.arange(len(self)), self.lengths)

    def trained(self) -> np.ndarray:
        """(T,) bool: tokens with a label."""
        return self.labels != IGNORE

    def with_labels(self, labels: np.ndarray) -> TokenizedSFT:
        """The same tokens with other labels (e.g. after token selection)."""
        return TokenizedSFT(self.input_ids, np.asarray(labels, np.int64), self.offsets,
                            self.rows, dict(self.stats))

    def subset(self, records: np.ndarray) -> TokenizedSFT:
        """Records `records` (indices into this set, in the order given)."""
        records = np.asarray(records, np.int64)
        starts, ends = self.offsets[records], self.offsets[records + 1]
        lengths = ends - starts
        offsets = np.zeros(len(records) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # every kept token's position in the flat arrays, without a loop over records
        take = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
        return TokenizedSFT(self.input_ids[take], self.labels[take], offsets, self.rows[records],
                            dict(self.stats))
