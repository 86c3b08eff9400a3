"""`crediflow` on the command line: audit a label column of a file, curate its ratings and
select a budget of rows, or estimate a classifier's fairness from weak proxies of the group,
without the pipeline.

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
from crediflow.errors import ConfigError, CrediflowError, InputError
from crediflow.fairness.config import FairnessConfig
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


def _sorted_classes(values: np.ndarray) -> list[str]:
    """The distinct values, in numeric order when all are numbers, else in text order."""
    distinct = sorted(set(values.tolist()))
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return distinct


def _codes(values: np.ndarray, classes: list[str]) -> np.ndarray:
    """Each value's index in `classes` (-1 for a value not among them)."""
    import pandas as pd

    return pd.Categorical(values, categories=classes).codes.astype(np.int64)


def _fairness_columns(table, names: dict[str, str]) -> dict[str, np.ndarray]:
    """Each named column's values as text; a missing value is refused with its line."""
    from crediflow.data.tables import column_labels

    if table.unparsed:
        first = table.unparsed[0]
        raise InputError(first["reason"], file=table.path, line=first["line"],
                         field=first["field"])
    out = {}
    for role, name in names.items():
        values = column_labels(table, name)
        missing = np.flatnonzero(values == None)  # noqa: E711 - element-wise
        if missing.size:
            first = int(missing[0])
            line = int(table.lines[first]) if table.lines is not None else None
            where = "" if line is not None else f" in {table.where(first)}"
            raise InputError(f"missing value{where} ({missing.size} row(s) lack one); every "
                             f"row needs its {role}", file=table.path, line=line, field=name)
        out[name] = values
    return out


def _group_classes(path: str, values: dict[str, np.ndarray], proxy_names: list[str],
                   group_name: str | None) -> list[str]:
    """The group classes (the group column's, else the proxies'), each proxy checked to have
    the same classes."""
    if group_name is not None:
        classes = _sorted_classes(values[group_name])
        source = f"group column {group_name!r} has"
    else:
        classes = _sorted_classes(np.concatenate([values[n] for n in proxy_names]))
        source = "the proxy columns together have"
    for name in proxy_names:
        own = _sorted_classes(values[name])
        if len(own) != len(classes) or set(own) != set(classes):
            raise InputError(f"proxy column has {len(own)} classes ({', '.join(own)}) but "
                             f"{source} {len(classes)} ({', '.join(classes)}); each proxy "
                             f"must predict the same classes as the groups", file=path,
                             field=name)
    return classes


def _check_slices(path: str, labels: np.ndarray, groups: np.ndarray, names: tuple[list[str],
                  list[str]], field: str) -> None:
    """Every group must have rows with every label class present (equalized odds)."""
    label_names, group_names = names
    counts = np.zeros((len(label_names), len(group_names)), np.int64)
    np.add.at(counts, (labels, groups), 1)
    present = counts.sum(axis=1) > 0
    empty = np.argwhere((counts == 0) & present[:, None])
    if empty.size:
        y, a = empty[0]
        raise InputError(f"group {group_names[a]!r} has no rows with label {label_names[y]!r}; "
                         f"equalized odds needs rows of every group in every label class",
                         file=path, field=field)


def _fairness_inputs(args: argparse.Namespace, proxy_names: list[str]) -> dict:
    """The file's predictions, labels, proxies (and groups) as class indices, with names."""
    from crediflow.data.tables import read_table

    table = read_table(args.file)
    names = {"prediction": args.pred_column, "label": args.label_column}
    names.update({f"proxy {i + 1}": n for i, n in enumerate(proxy_names)})
    if args.group_column:
        names["group"] = args.group_column
    values = _fairness_columns(table, names)
    classes = _sorted_classes(np.concatenate([values[args.pred_column],
                                              values[args.label_column]]))
    groups = _group_classes(table.path, values, proxy_names, args.group_column)
    out = {"table": table, "classes": classes, "group_classes": groups,
           "pred": _codes(values[args.pred_column], classes),
           "labels": _codes(values[args.label_column], classes),
           "proxies": np.stack([_codes(values[n], groups) for n in proxy_names], axis=1),
           "groups": None}
    label_and_groups = (classes, groups)
    if args.group_column:
        out["groups"] = _codes(values[args.group_column], groups)
        _check_slices(table.path, out["labels"], out["groups"], label_and_groups,
                      args.group_column)
    _check_slices(table.path, out["labels"], out["proxies"][:, 0], label_and_groups,
                  proxy_names[0])
    return out


def _proxy_names(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in args.proxy_columns.split(",") if n.strip()]
    if len(names) != 3:
        few = "fewer" if len(names) < 3 else "more"
        raise ConfigError(f"{few} than three proxies: got {len(names)} "
                          f"({', '.join(names) or 'none'}); the method needs exactly three "
                          f"weak proxies of the group", source=_CLI, key="proxy_columns")
    if len(set(names)) != 3:
        raise ConfigError("the three proxy columns must differ", source=_CLI,
                          key="proxy_columns")
    return names


def _fairness(args: argparse.Namespace) -> None:
    import json

    from crediflow.fairness.proxies import estimate_fairness

    cfg = FairnessConfig.from_args(args)
    proxy_names = _proxy_names(args)
    data = _fairness_inputs(args, proxy_names)
    if cfg.positive_class >= len(data["classes"]):
        raise ConfigError(f"{cfg.positive_class} is not a class index; the classes are "
                          f"{', '.join(data['classes'])} (0..{len(data['classes']) - 1})",
                          source=_CLI, key="positive_class")
    try:
        estimate = estimate_fairness(data["pred"], data["labels"], data["proxies"],
                                     groups=data["groups"], config=cfg,
                                     num_classes=len(data["classes"]),
                                     num_groups=len(data["group_classes"]))
    except InputError as exc:
        raise InputError(exc.reason, file=args.file,
                         field=",".join(proxy_names) if exc.field == "proxies" else exc.field
                         ) from None
    if args.json:
        out = estimate.to_dict()
        out.update(file=args.file, rows=int(data["pred"].size), classes=data["classes"],
                   positive_class=data["classes"][cfg.positive_class],
                   groups=data["group_classes"])
        print(json.dumps(out, indent=2))
        return
    _print_fairness(estimate, data, args, proxy_names)


def _print_fairness(estimate, data: dict, args: argparse.Namespace,
                    proxy_names: list[str]) -> None:
    groups, classes = data["group_classes"], data["classes"]
    width = max(6, *(len(g) for g in groups))
    print(f"{args.file}: {data['pred'].size} rows; classes {', '.join(classes)} (positive "
          f"{classes[FairnessConfig.from_args(args).positive_class]}); groups "
          f"{', '.join(groups)} (proxies {', '.join(proxy_names)}"
          + (f"; true groups from {args.group_column})" if args.group_column else ")"))
    print(f"proxies' transition matrix T[true group, proxy group] (HOC, {estimate.mode} mode):")
    print(" " * (width + 2) + "  ".join(f"{g:>{width}}" for g in groups))
    for g, row in zip(groups, estimate.T, strict=True):
        print(f"  {g:>{width}}" + "".join(f"  {v:>{width}.3f}" for v in row))
    print("group prior p: " + ", ".join(f"{g}={v:.3f}" for g, v in zip(groups, estimate.p,
                                                                       strict=True)))
    print("proxy agreement (Cohen's kappa): " + ", ".join(
        f"{k}: {v:.3f}" for k, v in estimate.to_dict()["kappa"].items()))
    true = estimate.true is not None
    print(f"{'gap':<20} {'raw':>7} {'calibrated':>10}" + (f" {'true':>7} {'raw error':>9} "
                                                         f"{'calibrated error':>16}" if true
                                                         else ""))
    titles = {"dp": "demographic parity", "eod": "equalized odds", "eop": "equal opportunity"}
    for name, title in titles.items():
        line = (f"{title:<20} {getattr(estimate.raw, name):>7.3f} "
                f"{getattr(estimate.calibrated, name):>10.3f}")
        if true:
            line += (f" {getattr(estimate.true, name):>7.3f} "
                     f"{getattr(estimate.raw_error, name):>9.1%} "
                     f"{getattr(estimate.calibrated_error, name):>16.1%}")
        print(line)
    for warning in estimate.warnings:
        print(f"warning: {warning}")


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
    _fairness_parser(commands)
    return parser


def _fairness_parser(commands) -> None:
    fairness = commands.add_parser(
        "fairness", help="estimate a classifier's fairness gaps from three weak proxies of "
                         "the group",
        description="FILE (CSV, JSONL, JSON or Parquet) holds one row per example: the "
                    "classifier's prediction, the true label, three weak proxies of the "
                    "group and, optionally, the true group. Prints demographic parity, "
                    "equalized odds and equal opportunity measured with proxy 1 (raw) and "
                    "calibrated with the proxies' HOC transition matrix (Zhu et al.), and "
                    "the true gaps when --group-column is given. Classes sort numerically "
                    "when all are numbers, else as text.")
    fairness.add_argument("file", help="CSV, JSONL, JSON or Parquet")
    fairness.add_argument("--pred-column", required=True, metavar="COL",
                          help="the classifier's predictions")
    fairness.add_argument("--label-column", required=True, metavar="COL",
                          help="the true labels")
    fairness.add_argument("--proxy-columns", required=True, metavar="A,B,C",
                          help="three columns, each a weak proxy's guess of the group")
    fairness.add_argument("--group-column", default=None, metavar="COL",
                          help="the true groups, when known (adds the true gaps and errors)")
    fairness.add_argument("--json", action="store_true",
                          help="write JSON to stdout: dp, eod, eop, each with raw, "
                               "calibrated (and true), plus T, p, kappa and warnings")
    FairnessConfig.add_arguments(fairness)
    fairness.set_defaults(run=_fairness)


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
