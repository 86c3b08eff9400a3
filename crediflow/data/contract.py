"""The ingest data contract as a Great Expectations suite, with per-row failures.

Each expectation runs on a flat per-record frame (turn counts, empty turns, unknown roles,
label, rating, id) and names the record field and the reason a failing row is rejected.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crediflow.data.schema import (
    CONTENT,
    ID,
    LABEL,
    MESSAGES_COLUMN,
    RATING,
    ROLE,
    ROLES,
    SOURCE,
)


@dataclass(frozen=True)
class Rule:
    """One expectation of the contract and what a failing row is told."""

    column: str
    field: str
    reason: Callable[[object], str]
    expectation: str
    kwargs: dict


def contract_rules(
    classes: Sequence[str] | None, rating_range: Sequence[float] | None
) -> list[Rule]:
    """The rules a canonical record must satisfy, given the configured classes and rating range."""
    rules = [
        Rule(ID, ID, lambda v: "missing id", "ExpectColumnValuesToNotBeNull", {}),
        Rule(ID, ID, lambda v: f"duplicate id {v!r}", "ExpectColumnValuesToBeUnique", {}),
        Rule(SOURCE, SOURCE, lambda v: "missing source", "ExpectColumnValuesToNotBeNull", {}),
        Rule("n_turns", MESSAGES_COLUMN, lambda v: "the conversation has no turns",
             "ExpectColumnValuesToBeBetween", {"min_value": 1}),
        Rule("n_empty_turns", f"{MESSAGES_COLUMN}.{CONTENT}",
             lambda v: f"{v} turn(s) with empty content",
             "ExpectColumnValuesToBeBetween", {"min_value": 0, "max_value": 0}),
        Rule("first_bad_role", f"{MESSAGES_COLUMN}.{ROLE}",
             lambda v: f"role {v!r} is not one of {', '.join(ROLES)}",
             "ExpectColumnValuesToBeNull", {}),
        Rule("has_assistant", MESSAGES_COLUMN, lambda v: "no assistant turn to learn from",
             "ExpectColumnValuesToBeInSet", {"value_set": [True]}),
    ]
    if classes:
        allowed = ", ".join(classes)
        rules.append(Rule(LABEL, LABEL,
                          lambda v: f"unknown label {v!r}; expected one of {allowed}",
                          "ExpectColumnValuesToBeInSet", {"value_set": list(classes)}))
    if rating_range:
        lo, hi = rating_range
        rules.append(Rule(RATING, RATING, lambda v: f"rating {v} is outside [{lo}, {hi}]",
                          "ExpectColumnValuesToBeBetween", {"min_value": lo, "max_value": hi}))
    return rules


def contract_frame(records: pa.Table) -> pd.DataFrame:
    """The per-record quantities the contract checks, one row per record."""
    messages = records.column(MESSAGES_COLUMN).combine_chunks()
    n = len(messages)
    parent = pc.list_parent_indices(messages).to_numpy()
    flat = messages.flatten()
    content_len = pc.utf8_length(pc.utf8_trim_whitespace(flat.field(CONTENT)))
    empty = pc.fill_null(pc.equal(content_len, 0), True).to_numpy(zero_copy_only=False)
    role = flat.field(ROLE)
    bad_role = ~pc.fill_null(pc.is_in(role, value_set=pa.array(ROLES)), False).to_numpy(
        zero_copy_only=False
    )
    first_bad = np.full(n, -1)
    bad_idx = np.flatnonzero(bad_role)[::-1]  # reversed so the first bad turn wins
    first_bad[parent[bad_idx]] = bad_idx
    has_bad = first_bad >= 0
    first_bad_role = np.full(n, None, dtype=object)
    first_bad_role[has_bad] = pc.fill_null(role, "<missing>").to_numpy(
        zero_copy_only=False)[first_bad[has_bad]]
    is_assistant = pc.fill_null(pc.equal(role, "assistant"), False).to_numpy(zero_copy_only=False)
    return pd.DataFrame(
        {
            ID: records.column(ID).to_pandas(),
            SOURCE: records.column(SOURCE).to_pandas(),
            "n_turns": pc.list_value_length(messages).to_numpy(zero_copy_only=False),
            "n_empty_turns": np.bincount(parent[empty], minlength=n),
            "first_bad_role": first_bad_role,
            "has_assistant": np.bincount(parent[is_assistant], minlength=n) > 0,
            LABEL: records.column(LABEL).to_pandas(),
            RATING: records.column(RATING).to_pandas(),
        }
    )


@dataclass
class ContractResult:
    """Which rows broke which rule, and Great Expectations' own summary."""

    failures: list[tuple[Rule, np.ndarray]]
    summary: dict


def check_contract(frame: pd.DataFrame, rules: Sequence[Rule]) -> ContractResult:
    """Validate `frame` with Great Expectations; return the failing row positions per rule."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("crediflow")
        .add_dataframe_asset("records")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame.reset_index(drop=True)})
    )
    suite = gx.ExpectationSuite(name="crediflow_ingest")
    for rule in rules:
        suite.add_expectation(getattr(gx.expectations, rule.expectation)(
            column=rule.column, **rule.kwargs))
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    failures = []
    for rule, res in zip(rules, result.results, strict=True):
        idx = np.asarray(res.result.get("unexpected_index_list") or [], dtype=np.int64)
        failures.append((rule, idx))
    summary = {
        "success": bool(result.success),
        "evaluated_expectations": len(result.results),
        "expectations": [
            {
                "expectation": res.expectation_config.type,
                "column": res.expectation_config.kwargs.get("column"),
                "success": bool(res.success),
                "unexpected_count": int(res.result.get("unexpected_count") or 0),
            }
            for res in result.results
        ],
    }
    return ContractResult(failures, summary)
