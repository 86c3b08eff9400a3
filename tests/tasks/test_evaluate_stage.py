"""The evaluate stage refuses a held-out split that overlaps the training records, naming
the file, before loading any model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from crediflow.data.schema import ID
from crediflow.errors import InputError
from crediflow.models.sft import IGNORE, TokenizedSFT, sft_columns
from tasks.catalog import Catalog
from tasks.evaluate import _heldout
from tasks.settings import PROJECT_ROOT


def _table(ids: list[str], tokens: list[list[int]]) -> pa.Table:
    flat = np.array([t for row in tokens for t in row], np.int64)
    offsets = np.cumsum([0] + [len(row) for row in tokens]).astype(np.int64)
    labels = flat.copy()
    labels[offsets[:-1]] = IGNORE
    sft = TokenizedSFT(flat, labels, offsets, np.arange(len(ids), dtype=np.int64))
    return pa.table({ID: ids, **sft_columns(sft)})


@pytest.mark.parametrize(("heldout_ids", "heldout_tokens", "words"), [
    (["a"], [[1, 2, 3]], "also training records"),
    (["z"], [[4, 5, 6]], "'z' has the same tokens as training record 'b'")])
def test_an_overlapping_heldout_split_is_refused(tmp_path, heldout_ids, heldout_tokens, words):
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    catalog = Catalog(tmp_path, params)
    folder = tmp_path / params["catalog"]["token_cleaned"]
    folder.mkdir(parents=True)
    pq.write_table(_table(["a", "b"], [[1, 2, 3], [4, 5, 6]]), catalog.path("token_cleaned"))
    pq.write_table(_table(heldout_ids, heldout_tokens), catalog.path("heldout"))
    with pytest.raises(InputError, match=words) as info:
        _heldout(catalog)
    assert info.value.file == str(catalog.path("heldout"))
    pq.write_table(_table(["h"], [[7, 8, 9]]), catalog.path("heldout"))
    heldout, md5 = _heldout(catalog)
    assert len(heldout) == 1 and len(md5) == 32
