"""Stages audit and fix on a synthetic project whose label noise is known."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crediflow.data.schema import RECORD_SCHEMA
from crediflow.errors import InputError
from crediflow.synthetic.noise import clustered_embeddings, noisy_labels
from tasks.catalog import vectors_table
from tasks.settings import PROJECT_ROOT

N, NOISE = 3000, 0.2


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with ingested records and embeddings: clustered embeddings, two
    classes, 20% of the labels flipped symmetrically, and 10 unlabelled rows."""
    monkeypatch.setenv("CREDIFLOW_HOME", str(tmp_path))
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    vectors, y = clustered_embeddings(N, 32, 2, clusters_per_class=4, latent_dim=4, seed=2)
    flipped = noisy_labels(y, np.array([[1 - NOISE, NOISE], [NOISE, 1 - NOISE]]), seed=3)
    names = np.array(["harmless", "harmful"], dtype=object)
    true, noisy = names[y], names[flipped]
    noisy[:10] = None
    ids = [f"r{i}" for i in range(N)]
    records = pa.table({
        "id": ids,
        "messages": [[{"role": "user", "content": f"q{i}"},
                      {"role": "assistant", "content": "a"}] for i in range(N)],
        "label": noisy, "rating": [None] * N, "group": [None] * N, "source": ["s"] * N,
    }, schema=RECORD_SCHEMA)
    (tmp_path / "data/ingested").mkdir(parents=True)
    (tmp_path / "data/embeddings").mkdir(parents=True)
    pq.write_table(records, tmp_path / "data/ingested/records.parquet")
    pq.write_table(vectors_table(records.column("id"), vectors.astype(np.float32)),
                   tmp_path / "data/embeddings/embeddings.parquet")
    (tmp_path / "data/truth").mkdir(parents=True)
    pd.DataFrame({"id": ids, "true_label": true}).to_csv(
        tmp_path / "data/truth/demo_labels.csv", index=False)
    return tmp_path


def test_audit_then_fix_recovers_the_true_labels(project):
    from tasks import audit, fix

    metrics = audit.run()
    assert metrics["unlabelled"] == 10 and metrics["audited"] == N - 10
    assert metrics["T"][0][0] == pytest.approx(1 - NOISE, abs=0.06)
    audited = pq.read_table(project / "data/audited/records.parquet")
    assert audited.column("label_issue").null_count == 10
    assert (project / "reports/audit/transition_matrix.png").exists()

    result = fix.run()
    truth = result["against_truth"]
    assert truth["detection_precision"] >= 0.9 and truth["detection_recall"] >= 0.9
    assert truth["label_accuracy_after"] > truth["label_accuracy_before"] + 0.15
    changelog = pq.read_table(project / "data/fixed/changelog.parquet").to_pandas()
    assert len(changelog) == result["flagged"]
    assert (changelog["action"] == "relabel").sum() == result["changed"]
    fixed = pq.read_table(project / "data/fixed/records.parquet").to_pandas()
    assert len(fixed) == N


def test_stale_embeddings_are_a_clear_error_and_write_nothing(project):
    from tasks import audit

    table = pq.read_table(project / "data/embeddings/embeddings.parquet").slice(0, N - 5)
    pq.write_table(table, project / "data/embeddings/embeddings.parquet")
    with pytest.raises(InputError, match=r"5 ingested record\(s\) have no embedding.*rerun the "
                                         r"embed stage"):
        audit.run()
    assert not (project / "data/audited").exists()
