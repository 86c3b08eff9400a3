"""The canonical record every stage reads and writes (DESIGN.md section 2)."""

from __future__ import annotations

import pyarrow as pa

ROLES: tuple[str, ...] = ("system", "user", "assistant")

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("messages", MESSAGES, nullable=False),
        pa.field("label", pa.string()),
        pa.field("rating", pa.float64()),
        pa.field("group", pa.string()),
        pa.field("source", pa.string(), nullable=False),
    ]
)

# One row per input row (or whole file) that did not make it into the records.
# `row` is the 1-based record number inside `file`; `line` the 1-based line where the
# format has lines (JSONL, CSV), else null.
REJECT_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64()),
        pa.field("file", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string()),
    ]
)

# Fields the supported source formats may carry, with their raw types. Anything else in
# an input row is ignored.
RAW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("messages", MESSAGES),
        pa.field(
            "conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
        ),
        pa.field("system", pa.string()),
        pa.field("instruction", pa.string()),
        pa.field("input", pa.string()),
        pa.field("output", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("response", pa.string()),
        pa.field("label", pa.string()),
        pa.field("rating", pa.float64()),
        pa.field("group", pa.string()),
    ]
)


# Column names: every stage's columns, named once. Stages and their consumers use these
# constants, never the strings.

# the canonical record (ingest)
ID, MESSAGES_COLUMN, LABEL, RATING, GROUP, SOURCE = RECORD_SCHEMA.names
ROLE, CONTENT = "role", "content"

# embed
VECTOR = "vector"

# audit: per-row verdicts (null on unlabelled rows)
LABEL_ISSUE = "label_issue"
LABEL_SCORE = "label_score"
SUGGESTED_LABEL = "suggested_label"
SUGGESTION_CONFIDENCE = "suggestion_confidence"
AUDIT_COLUMNS = (LABEL_ISSUE, LABEL_SCORE, SUGGESTED_LABEL, SUGGESTION_CONFIDENCE)

# fix: the label before the fix; the changelog
ORIGINAL_LABEL = "original_label"
OLD, NEW, CONFIDENCE, ACTION = "old", "new", "confidence", "action"
TRUE_LABEL = "true_label"  # a truth side file: id, true_label

# select
RATING_EXPECTED = "rating_expected"
RATING_ARGMAX = "rating_argmax"
CURATED_RATING = "curated_rating"
LONG_TAIL_SCORE = "long_tail_score"
SELECTED = "selected"
SELECT_COLUMNS = (RATING, RATING_EXPECTED, RATING_ARGMAX, CURATED_RATING, LONG_TAIL_SCORE,
                  SELECTED)

# plain tables on the command line
DEFAULT_TEXT_COLUMN = "text"  # where a plain table's text is, unless --text-column says
REJECTED_REASON = "rejected_reason"  # --out: why a row was not used; null for used rows

# token_clean: tokenized records (list columns of token ids, per-token values)
INPUT_IDS = "input_ids"
LABELS = "labels"  # the token id where trained, -100 elsewhere
LABELS_ALL = "labels_all"  # every response token labelled (the records before cleaning)
ATTENTION_MASK = "attention_mask"
TOKEN_SCORES = "token_scores"  # influence of each response token (NaN elsewhere)
KEPT_FRACTION = "kept_fraction"  # share of a record's response tokens that keep their label
NO_KEPT_TOKEN = "no_kept_token"  # the record keeps no token: not trained on after cleaning
