"""`crediflow` on the command line: audit a label column of a file, or curate its ratings and
select a budget of rows, without the pipeline.

Files are read like ingest reads them; rows that cannot be used are reported and left out,
and the run fails only when their share passes --max-reject-fraction. Settings are the
params.yaml ones, as flags. Exit status 65 when the input or a setting is refused.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from crediflow.audit.config import AuditConfig
from crediflow.data.schema import (
    DEFAULT_TEXT_COLUMN,
    LABEL_ISSUE,
    LABEL_SCORE,
    SUGGESTED_LABEL,
    SUGGESTION_CONFIDENCE,
)
from crediflow.errors import ConfigError, CrediflowError
from crediflow.ingest.config import IngestConfig
from crediflow.select.config import SelectConfig

EXIT_BAD_INPUT = 65  # sysexits' EX_DATAERR, as the pipeline stages
_CLI = "the command line"


def _max_reject_fraction(args: argparse.Namespace) -> float:
    return IngestConfig.from_args(args).max_reject_fraction


def _texts(args: argparse.Namespace, table, rejects) -> np.ndarray:
    """Each row's text: --text-column when given, else the conversation when the table is in
    an ingest format, else the `text` column. Says which reading it took when both fit."""
    from crediflow.data.tables import (
        column_texts,
        conversation_column_texts,
        has_conversations,
    )

    if args.text_column is not None:
        return column_texts(table, args.text_column, rejects)
    if has_conversations(table):
        if DEFAULT_TEXT_COLUMN in table.columns.column_names:
            print(f"note: {table.path} has conversation fields and a {DEFAULT_TEXT_COLUMN!r} "
                  f"column; embedding the conversations (pass --text-column "
                  f"{DEFAULT_TEXT_COLUMN} to embed that column instead)")
        return conversation_column_texts(table, rejects)
    return column_texts(table, DEFAULT_TEXT_COLUMN, rejects)


def _embed(args: argparse.Namespace, texts: np.ndarray) -> np.ndarray:
    from crediflow.embed.embed import embed_texts
    from crediflow.models.encoder import load_encoder

    vectors, _ = embed_texts([str(t) for t in texts], load_encoder(args.model))
    return vectors


def _report_rejects(rejects, limit: float) -> np.ndarray:
    """Print the rejects (or fail past the limit); the usable rows."""
    for line in rejects.check(limit):
        print(line)
    return rejects.usable


def _write(args: argparse.Namespace, table, rejects, added: dict) -> None:
    from crediflow.data.tables import output_table, write_table

    out = output_table(table, rejects, added)
    write_table(out, args.out)
    print(f"\nwrote {out.num_rows} rows to {args.out}")


def _audit(args: argparse.Namespace) -> None:
    from crediflow.audit.table import audit_label_column
    from crediflow.data.tables import RowRejects, check_output_path, column_labels, read_table

    cfg = AuditConfig.from_args(args)
    limit = _max_reject_fraction(args)
    if args.out:
        check_output_path(args.out)
    table = read_table(args.file)
    rejects = RowRejects(table)
    labels = column_labels(table, args.label_column)
    texts = _texts(args, table, rejects)
    usable = _report_rejects(rejects, limit)
    audit = audit_label_column(labels[usable], _embed(args, texts[usable]), **cfg.to_dict())
    where = [table.where(int(i)) for i in np.flatnonzero(usable)]
    _print_audit(audit, texts[usable], labels[usable], where, args.top)
    if args.out:
        _write(args, table, rejects, audit.columns)


def _select(args: argparse.Namespace) -> None:
    import pyarrow as pa

    from crediflow.data.schema import CURATED_RATING, LONG_TAIL_SCORE, RATING, SELECTED
    from crediflow.data.tables import RowRejects, check_output_path, column_numbers, read_table
    from crediflow.errors import InputError
    from crediflow.select.curation import curate_and_select
    from crediflow.select.selection import budget_count

    cfg = SelectConfig.from_args(args, **({"rater": "column"} if args.rating_column else {}))
    if args.rating_column and cfg.rater != "column":
        raise ConfigError(f"--rating-column reads the ratings from the file (the column "
                          f"rater) but --rater is {cfg.rater}; give one of the two",
                          source=_CLI, key="rater")
    if cfg.rater == "openai":
        raise CrediflowError("the command line rates with --rater column or hf; for an "
                             "OpenAI-compatible endpoint run the pipeline's select stage "
                             "(params.yaml select.rater: openai)")
    limit = _max_reject_fraction(args)
    if args.out:
        check_output_path(args.out)
    table = read_table(args.file)
    rejects = RowRejects(table)
    texts = _texts(args, table, rejects)
    ratings = np.full(table.num_rows, np.nan)
    edges = np.asarray(cfg.bins, float)
    if cfg.rater == "column":
        name = args.rating_column or RATING
        ratings = column_numbers(table, name, rejects)
        rejects.add(np.isnan(ratings), name, "missing rating (the column rater needs one on "
                                             "every row)")
        outside = (ratings < edges[0]) | (ratings > edges[-1])
        rejects.add(outside, name, f"rating outside the bins [{edges[0]:g}, {edges[-1]:g}]")
    usable = _report_rejects(rejects, limit)
    n = int(usable.sum())
    try:
        budget_count(cfg.budget, n)  # a bad budget fails before the rating and embedding work
    except InputError as exc:
        raise ConfigError(exc.reason, source=_CLI, key="budget") from None
    if cfg.rater == "hf":
        ratings[usable] = _rate_hf(cfg, texts[usable])
    result = curate_and_select(ratings[usable], _embed(args, texts[usable]), cfg.budget,
                               bins=cfg.bins, k=cfg.k, rounds=cfg.rounds, epochs=cfg.epochs,
                               threshold=cfg.threshold, seed=cfg.seed)
    _print_curation(result, n)
    if args.out:
        added = {CURATED_RATING: pa.array(result.curated_rating),
                 LONG_TAIL_SCORE: pa.array(result.long_tail),
                 SELECTED: pa.array(result.selected)}
        if cfg.rater == "hf":
            added = {RATING: pa.array(ratings[usable]), **added}
        _write(args, table, rejects, added)


def _rate_hf(cfg: SelectConfig, texts: np.ndarray) -> np.ndarray:
    """Ratings of `texts` by a local causal LM (cfg.model; the packaged SmolLM2 by default),
    through the select stage's own rating code (no cache on the command line)."""
    from crediflow.select.rating import rate

    return rate([str(t) for t in texts], cfg).rating


def _print_curation(result, n: int) -> None:
    """The score transition matrix, the credibility, the moves and the selection."""
    print("score transition matrix T[true class, observed class]:")
    for row in result.T:
        print("  " + "  ".join(f"{v:.3f}" for v in row))
    print(f"credibility of the ratings: {result.credibility:.3f}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    moved = int((result.curated_class != result.raw_class).sum())
    print(f"curated: {moved} of {n} ratings moved "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(result.moves.items())) or 'none'})")
    print(f"selected {int(result.selected.sum())} of {n} rows")


def _print_audit(audit, texts, labels, where: list[str], top: int) -> None:
    result = audit.result
    classes = list(result.classes)
    width = max(len(c) for c in classes)
    print(f"classes: {', '.join(classes)}")
    print("noise transition matrix T[true, observed]:")
    print(" " * (width + 2) + "  ".join(f"{c:>{max(width, 6)}}" for c in classes))
    for c, row in zip(classes, result.T, strict=True):
        print(f"  {c:>{width}}" + "".join(f"  {v:>{max(width, 6)}.3f}" for v in row))
    print("p (true class prior): " + ", ".join(f"{c}={v:.3f}"
                                               for c, v in zip(classes, result.p, strict=True)))
    print(f"credibility: {result.credibility:.3f}")
    for warning in audit.warnings:
        print(f"warning: {warning}")
    flagged = np.flatnonzero(audit.columns[LABEL_ISSUE].fill_null(False).to_numpy(
        zero_copy_only=False))
    score = audit.columns[LABEL_SCORE].to_numpy(zero_copy_only=False)
    order = flagged[np.argsort(score[flagged].astype(float), kind="stable")][:top]
    suggested = audit.columns[SUGGESTED_LABEL].to_pylist()
    confidence = audit.columns[SUGGESTION_CONFIDENCE].to_pylist()
    print(f"suspected label errors: {len(flagged)} of {int(audit.labelled.sum())} labelled rows"
          + (f"; the {len(order)} most suspect:" if len(order) else ""))
    for i in order:
        text = " ".join(str(texts[i]).split())
        print(f"  {where[i]}: {labels[i]} -> {suggested[i]} (confidence {confidence[i]:.2f}, "
              f"score {score[i]:.3f}): {text[:80]}")


def _common_flags(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("file", help="CSV, JSONL, JSON or Parquet")
    parser.add_argument("--text-column", default=None,
                        help="the column holding each row's text (default: the conversation "
                             "when the file is in an ingest format, else 'text')")
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--model", default=None, help="encoder name or folder (default MiniLM)")
    default = IngestConfig.describe()["max_reject_fraction"]["default"]
    parser.add_argument("--max-reject-fraction", dest="cfg_max_reject_fraction",
                        default=argparse.SUPPRESS, metavar="FLOAT",
                        help=f"fail when more than this share of rows cannot be used "
                             f"(default: {default}, as ingest.max_reject_fraction)")


def build_parser() -> argparse.ArgumentParser:
    """The `crediflow` argument parser: one subcommand per method, flags from its config."""
    parser = argparse.ArgumentParser(prog="crediflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser(
        "audit", help="estimate the label noise of a file and list suspected label errors",
        description="FILE holds records in any ingest format, or a table whose text is in "
                    "--text-column. Blank labels are unlabelled rows: kept, not audited.")
    _common_flags(audit, "write every input row plus rejected_reason and the audit columns "
                         "(format by extension)")
    audit.add_argument("--label-column", required=True)
    audit.add_argument("--top", type=int, default=10, help="suspected rows to print")
    AuditConfig.add_arguments(audit)
    audit.set_defaults(run=_audit)
    select = commands.add_parser(
        "select", help="curate ratings (DS2) and select a budget of rows",
        description="FILE as for audit. Ratings come from --rating-column (the column rater) "
                    "or a local causal LM (--rater hf); they are mapped to classes (--bins), "
                    "curated with the score transition matrix, and rows are selected from the "
                    "top curated class down, by long-tail score.")
    _common_flags(select, "write every input row plus rejected_reason, curated_rating, "
                          "long_tail_score, selected (format by extension)")
    select.add_argument("--rating-column", default=None,
                        help="read the ratings from this column (implies --rater column; "
                             "with --rater column the default is 'rating')")
    select.add_argument("--rater-model", dest="cfg_model", default=argparse.SUPPRESS,
                        metavar="PATH",
                        help="hf: a causal LM folder or .gguf (default: the packaged "
                             "SmolLM2-135M-Instruct); params.yaml select.model")
    SelectConfig.add_arguments(select, skip=("model",))
    select.set_defaults(run=_select)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one subcommand; exit 65 with one message when the input or a setting is refused."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CrediflowError as exc:
        if isinstance(exc, ConfigError) and exc.source is None:
            exc = exc.with_source(_CLI)  # settings on the command line come from flags
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
