"""`crediflow` on the command line: audit a label column of a file, without the pipeline."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from crediflow.errors import CrediflowError


def _audit(args: argparse.Namespace) -> None:
    from crediflow.audit.table import audit_label_column
    from crediflow.data.tables import column_values, read_table, write_table

    table = read_table(args.file)
    labels = column_values(args.file, table, args.label_column)
    texts, vectors = _embed_file(args, table)
    audit = audit_label_column(labels, vectors, k=args.k, detector=args.detector, seed=args.seed)
    _print_audit(audit, texts, labels, args.top)
    if args.out:
        out = table.drop_columns([c for c in audit.columns if c in table.column_names])
        for name, values in audit.columns.items():
            out = out.append_column(name, values)
        write_table(out, args.out)
        print(f"\nwrote {out.num_rows} rows to {args.out}")


def _embed_file(args: argparse.Namespace, table) -> tuple[list[str], np.ndarray]:
    """Each row's text (its conversation, or --text-column) and its embedding."""
    from crediflow.data.tables import column_values, table_messages
    from crediflow.data.texts import conversation_texts
    from crediflow.embed.embed import embed_texts
    from crediflow.models.encoder import load_encoder

    messages = table_messages(args.file, table)
    if messages is not None:
        texts = conversation_texts(messages)
    else:
        texts = column_values(args.file, table, args.text_column)
        missing = np.flatnonzero([t is None or not str(t).strip() for t in texts])
        if len(missing):
            raise CrediflowError(f"{args.file}: row {int(missing[0]) + 1}, field "
                                 f"{args.text_column!r}: empty text ({len(missing)} rows)")
        texts = [str(t) for t in texts]
    vectors, _ = embed_texts(texts, load_encoder(args.model))
    return texts, vectors


def _select(args: argparse.Namespace) -> None:
    import pyarrow as pa

    from crediflow.data.tables import column_values, read_table, write_table
    from crediflow.errors import InputError
    from crediflow.select.curation import curate_and_select
    from crediflow.select.selection import budget_count

    table = read_table(args.file)
    raw = column_values(args.file, table, args.rating_column)
    try:
        ratings = raw.astype(float)
    except (TypeError, ValueError):
        raise InputError("ratings must be numbers", file=args.file,
                         field=args.rating_column) from None
    if np.isnan(ratings).any():
        row = int(np.flatnonzero(np.isnan(ratings))[0]) + 1
        raise InputError("missing rating (no rater in the CLI: fill the column first)",
                         file=args.file, line=row, field=args.rating_column)
    budget_count(args.budget, len(ratings))  # a bad budget fails before the embedding work
    _, vectors = _embed_file(args, table)
    bins = [float(b) for b in args.bins.split(",")] if args.bins else None
    try:
        result = curate_and_select(ratings, vectors, args.budget, bins=bins, k=args.k,
                                   seed=args.seed)
    except ValueError as exc:
        raise InputError(str(exc), file=args.file, field=args.rating_column) from None
    print("score transition matrix T[true class, observed class]:")
    for row in result.T:
        print("  " + "  ".join(f"{v:.3f}" for v in row))
    print(f"credibility of the ratings: {result.credibility:.3f}")
    moved = int((result.curated_class != result.raw_class).sum())
    print(f"curated: {moved} of {len(ratings)} ratings moved "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(result.moves.items())) or 'none'})")
    print(f"selected {int(result.selected.sum())} of {len(ratings)} rows")
    if args.out:
        out = table.drop_columns([c for c in ("curated_rating", "long_tail_score", "selected")
                                  if c in table.column_names])
        out = out.append_column("curated_rating", pa.array(result.curated_rating))
        out = out.append_column("long_tail_score", pa.array(result.long_tail))
        out = out.append_column("selected", pa.array(result.selected))
        write_table(out, args.out)
        print(f"wrote {out.num_rows} rows to {args.out}")


def _print_audit(audit, texts, labels, top: int) -> None:
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
    flagged = np.flatnonzero(audit.columns["label_issue"].fill_null(False).to_numpy(
        zero_copy_only=False))
    score = audit.columns["label_score"].to_numpy(zero_copy_only=False)
    order = flagged[np.argsort(score[flagged].astype(float), kind="stable")][:top]
    suggested = audit.columns["suggested_label"].to_pylist()
    confidence = audit.columns["suggestion_confidence"].to_pylist()
    print(f"suspected label errors: {len(flagged)} of {int(audit.labelled.sum())} labelled rows"
          + (f"; the {len(order)} most suspect:" if len(order) else ""))
    for i in order:
        text = " ".join(str(texts[i]).split())
        print(f"  row {i + 1}: {labels[i]} -> {suggested[i]} (confidence {confidence[i]:.2f}, "
              f"score {score[i]:.3f}): {text[:80]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crediflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    audit = commands.add_parser(
        "audit", help="estimate the label noise of a file and list suspected label errors",
        description="FILE is CSV, JSONL, JSON or Parquet: records in any ingest format, or a "
                    "table whose text is in --text-column.")
    audit.add_argument("file")
    audit.add_argument("--label-column", required=True)
    audit.add_argument("--text-column", default="text")
    audit.add_argument("--out", help="write the table plus the audit columns (format by extension)")
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--k", type=int, default=10, help="neighbours per sample (default 10)")
    audit.add_argument("--detector", choices=("knn", "probe", "both"), default="knn")
    audit.add_argument("--model", default=None, help="encoder name or folder (default MiniLM)")
    audit.add_argument("--top", type=int, default=10, help="suspected rows to print")
    audit.set_defaults(run=_audit)
    select = commands.add_parser(
        "select", help="curate ratings (DS2) and select a budget of rows",
        description="FILE as for audit. Ratings come from --rating-column; they are mapped "
                    "to classes (--bins edges, default one class per integer rating), curated "
                    "with the score transition matrix, and rows are selected from the top "
                    "curated class down, by long-tail score.")
    select.add_argument("file")
    select.add_argument("--budget", type=float, required=True,
                        help="rows to select: a count, or a fraction below 1")
    select.add_argument("--rating-column", default="rating")
    select.add_argument("--text-column", default="text")
    select.add_argument("--out", help="write the table plus curated_rating, long_tail_score, "
                                      "selected (format by extension)")
    select.add_argument("--bins", help="comma-separated bin edges, e.g. 0.5,1.5,2.5,3.5")
    select.add_argument("--seed", type=int, default=0)
    select.add_argument("--k", type=int, default=10)
    select.add_argument("--model", default=None, help="encoder name or folder (default MiniLM)")
    select.set_defaults(run=_select)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except CrediflowError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
