"""Degenerate data gets a warning, not confident numbers without a word."""

from __future__ import annotations

import numpy as np

from crediflow.audit import audit_label_column
from crediflow.select import curate_and_select
from crediflow.synthetic.noise import clustered_embeddings


def test_identical_texts_warn_that_the_graph_carries_no_information() -> None:
    vectors = np.tile(np.eye(8, dtype=np.float32)[0], (200, 1))  # every text the same
    labels = np.array(["a", "b"] * 100, dtype=object)
    audit = audit_label_column(labels, vectors, rounds=5, epochs=3)
    assert any("identical neighbours" in w for w in audit.warnings)


def test_constant_ratings_warn_that_there_is_nothing_to_curate() -> None:
    vectors, _ = clustered_embeddings(300, 16, 2, seed=0)
    result = curate_and_select(np.full(300, 3.0), vectors, 0.5, rounds=5, epochs=3)
    assert any("one class" in w for w in result.warnings)
    assert result.selected.sum() == 150


def test_informative_data_gets_no_such_warning() -> None:
    vectors, y = clustered_embeddings(600, 16, 2, seed=0)
    result = curate_and_select(1.0 + 4 * y, vectors, 0.5, bins=[0.5, 2.5, 5.5], rounds=5,
                               epochs=3)
    assert result.warnings == []
