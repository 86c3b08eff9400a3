"""The append-only shard caches: ShardCache, and EmbeddingCache / RatingCache built on it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crediflow.data.cache import Column, EmbeddingCache, RatingCache, ShardCache
from crediflow.errors import CrediflowError, InputError

COLUMNS = [Column("score", np.float64, np.nan), Column("vec", np.float32, np.nan, vector=True),
           Column("extra", np.float64, np.nan, vector=True, ragged=True, optional=True)]


def shard_cache(folder: Path) -> ShardCache:
    return ShardCache(folder, COLUMNS, metadata={"owner_id": "x"}, owner="owner",
                      label="test cache")


def keys(start: int, stop: int) -> list[str]:
    return [f"k{i}" for i in range(start, stop)]


def values(start: int, stop: int, extra_width: int | None = None) -> dict[str, np.ndarray]:
    n = stop - start
    out = {"score": np.arange(start, stop, dtype=np.float64),
           "vec": np.arange(start, stop, dtype=np.float32)[:, None].repeat(3, axis=1)}
    if extra_width is not None:
        out["extra"] = np.full((n, extra_width), float(extra_width))
    return out


# ------------------------------------------------------------------------------ ShardCache


def test_appending_shards_copies_held_rows_a_bounded_number_of_times(tmp_path: Path) -> None:
    cache = shard_cache(tmp_path)
    shards, rows = 300, 4
    for i in range(shards):
        start = i * rows
        cache.append(keys(start, start + rows), values(start, start + rows))
        assert cache.locate([f"k{start}"])[0] == start  # a lookup between appends, as callers do
    stored = shards * rows * (8 + 3 * 4)  # bytes: one float64 and three float32 per row
    # doubling buffers copy at most about the bytes stored; one concatenation per shard (the
    # old way) would copy about shards / 2 times as much
    assert cache.copied_bytes <= 2 * stored
    assert len(cache) == shards * rows

    reader = shard_cache(tmp_path)  # the same shards read from disk, one at a time
    found = reader.gather(reader.locate(keys(0, shards * rows)))
    assert reader.copied_bytes <= 2 * stored
    np.testing.assert_array_equal(found["score"], np.arange(shards * rows))
    np.testing.assert_array_equal(found["vec"][:, 2], np.arange(shards * rows))


@pytest.mark.parametrize("kind", ["embedding", "rating"])
def test_the_caches_do_not_concatenate_what_they_hold(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way both caches used to copy everything they held once per shard."""
    copied: list[int] = []
    concatenate, append = np.concatenate, pd.Index.append

    def counting_concatenate(arrays, *args, **kwargs):
        copied.append(sum(len(a) for a in arrays))
        return concatenate(arrays, *args, **kwargs)

    def counting_append(self, other):
        copied.append(len(self) + sum(map(len, other if isinstance(other, list) else [other])))
        return append(self, other)

    monkeypatch.setattr(np, "concatenate", counting_concatenate)
    monkeypatch.setattr(pd.Index, "append", counting_append)
    shards, rows = 100, 10
    cache = EmbeddingCache(tmp_path, "m") if kind == "embedding" else RatingCache(tmp_path, "r")
    for i in range(shards):
        batch = keys(i * rows, (i + 1) * rows)
        if isinstance(cache, EmbeddingCache):
            cache.add(np.array(batch), np.ones((rows, 4), np.float32))
            assert cache.lookup(np.array(batch))[0].all()
        else:
            cache.put_many(batch, np.full(rows, 2.0), probs=np.full((rows, 3), 1 / 3))
            assert cache.get_many(batch)[0].all()
    row_bytes = 4 * 4 if kind == "embedding" else 8 + 8 + 3 * 8
    assert sum(copied) <= 2 * shards * rows
    assert cache.copied_bytes <= 2 * shards * rows * row_bytes
    assert len(cache) == shards * rows


def test_a_wider_ragged_column_pads_the_narrower_rows(tmp_path: Path) -> None:
    cache = shard_cache(tmp_path)
    cache.append(keys(0, 2), values(0, 2))  # no "extra" at all
    cache.append(keys(2, 4), values(2, 4, extra_width=2))
    cache.append(keys(4, 6), values(4, 6, extra_width=3))
    cache.append(keys(6, 8), values(6, 8, extra_width=1))
    for reader in (cache, shard_cache(tmp_path)):
        assert reader.width("extra") == 3
        extra = reader.gather(reader.locate(["k0", "k2", "k4", "k6", "nope"]))["extra"]
        nan = np.nan
        np.testing.assert_array_equal(extra, [[nan] * 3, [2, 2, nan], [3, 3, 3], [1, nan, nan],
                                              [nan] * 3])


def test_round_trip_and_absent_keys_get_the_fill(tmp_path: Path) -> None:
    cache = shard_cache(tmp_path)
    assert len(cache) == 0 and cache.width("vec") is None
    assert cache.append(keys(0, 3), values(0, 3)) == 3
    reader = shard_cache(tmp_path)
    got = reader.gather(reader.locate(["k2", "zz", "k0"]))
    np.testing.assert_array_equal(got["score"], [2, np.nan, 0])
    assert got["vec"].dtype == np.float32 and got["vec"].shape == (3, 3)
    assert np.isnan(got["vec"][1]).all() and np.isnan(got["extra"]).all()
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_duplicate_keys_are_kept_once_first_stored_wins(tmp_path: Path) -> None:
    cache = shard_cache(tmp_path)
    twice = {"score": np.array([1.0, 2.0, 3.0]), "vec": np.zeros((3, 3))}
    assert cache.append(["a", "b", "a"], twice) == 2  # repeated within one append
    assert cache.append(["b", "c"], {"score": np.array([9.0, 4.0]), "vec": np.zeros((2, 3))}) == 1
    assert cache.append(["c"], {"score": np.array([9.0]), "vec": np.zeros((1, 3))}) == 0
    assert len(list(tmp_path.glob("*.parquet"))) == 2  # nothing new: no shard written
    # a shard holding a repeated key, and a key already held, as another writer might leave it
    pq.write_table(pa.table({"key": ["c", "d", "d"], "score": [7.0, 5.0, 6.0],
                             "vec": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(9)), 3)}
                            ).replace_schema_metadata({"owner_id": "x"}), tmp_path / "z.parquet")
    for reader in (cache, shard_cache(tmp_path)):
        assert len(reader) == 4
        got = reader.gather(reader.locate(["a", "b", "c", "d"]))["score"]
        np.testing.assert_array_equal(got, [1.0, 2.0, 4.0, 5.0])


def test_a_shard_from_another_process_is_read_at_the_next_lookup(tmp_path: Path) -> None:
    cache = shard_cache(tmp_path)
    cache.append(["a"], {"score": np.array([1.0]), "vec": np.ones((1, 3))})
    assert cache.locate(["b"])[0] == -1
    script = textwrap.dedent(f"""
        import numpy as np
        from pathlib import Path
        from crediflow.data.cache import Column, ShardCache
        columns = [Column("score", np.float64, np.nan),
                   Column("vec", np.float32, np.nan, vector=True)]
        cache = ShardCache(Path({str(tmp_path)!r}), columns, metadata={{"owner_id": "x"}},
                           owner="owner", label="test cache")
        cache.append(["a", "b"], {{"score": np.array([8.0, 2.0]), "vec": np.ones((2, 3))}})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[3])
    got = cache.gather(cache.locate(["a", "b"]))["score"]
    np.testing.assert_array_equal(got, [1.0, 2.0])  # "a" stays as this process stored it
    assert len(cache) == 2


def test_width_and_argument_errors(tmp_path: Path) -> None:
    cache = shard_cache(tmp_path)
    cache.append(["a"], {"score": np.array([1.0]), "vec": np.ones((1, 3))})
    with pytest.raises(InputError, match="width 2"):
        cache.append(["b"], {"score": np.array([1.0]), "vec": np.ones((1, 2))})
    with pytest.raises(InputError, match="needs 'vec'"):
        cache.append(["b"], {"score": np.array([1.0])})
    with pytest.raises(InputError, match="N = 2"):
        cache.append(["b", "c"], {"score": np.array([1.0]), "vec": np.ones((2, 3))})
    with pytest.raises(InputError, match="no column"):
        cache.append(["b"], {"score": np.array([1.0]), "vec": np.ones((1, 3)), "x": None})
    other = shard_cache(tmp_path / "other")
    other.append(["b"], {"score": np.array([1.0]), "vec": np.ones((1, 2))})
    for path in (tmp_path / "other").glob("*.parquet"):
        path.rename(tmp_path / path.name)
    with pytest.raises(InputError, match="cache shards of widths"):
        shard_cache(tmp_path).locate(["a"])
    assert len(list(tmp_path.glob("*.parquet"))) == 2  # the failed appends wrote nothing


# ------------------------------------------------------------------------- EmbeddingCache


def test_embedding_cache_round_trip_and_errors(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "m")
    found, vectors = cache.lookup(np.array(["a"]))
    assert cache.dim is None and not found.any() and vectors.shape == (0, 0)
    cache.add(np.array(["a", "b", "a"]), np.array([[1, 2], [3, 4], [5, 6]], np.float32))
    reopened = EmbeddingCache(tmp_path, "m")
    found, vectors = reopened.lookup(np.array(["b", "z", "a"]))
    assert found.tolist() == [True, False, True] and reopened.dim == 2 and len(reopened) == 2
    np.testing.assert_array_equal(vectors, [[3, 4], [1, 2]])
    assert vectors.dtype == np.float32
    assert reopened.lookup(np.array(["z"]))[1].shape == (0, 2)
    with pytest.raises(InputError, match="width"):
        cache.add(np.array(["c"]), np.ones((1, 5), np.float32))
    with pytest.raises(InputError, match="one vector per key"):
        cache.add(np.array(["c", "d"]), np.ones((1, 2), np.float32))
    with pytest.raises(InputError, match="NaN"):
        cache.add(np.array(["c"]), np.full((1, 2), np.nan, np.float32))
    with pytest.raises(InputError, match="model id"):
        EmbeddingCache(tmp_path, "")


def test_embedding_cache_refuses_another_models_shard(tmp_path: Path) -> None:
    EmbeddingCache(tmp_path, "m").add(np.array(["a"]), np.ones((1, 4), np.float32))
    other = EmbeddingCache(tmp_path, "other")
    other.folder.mkdir(parents=True)
    for path in EmbeddingCache(tmp_path, "m").folder.glob("*.parquet"):
        path.rename(other.folder / path.name)  # a shard copied into the wrong folder
    with pytest.raises(InputError, match="belongs to another model"):
        other.lookup(np.array(["a"]))


def test_embedding_shards_of_the_previous_layout_are_read(tmp_path: Path) -> None:
    folder = EmbeddingCache(tmp_path, "m").folder
    folder.mkdir(parents=True)
    for name, keys_, rows in (("1", ["a", "b"], [[0, 1], [2, 3]]), ("2", ["b", "c"],
                                                                     [[9, 9], [4, 5]])):
        vectors = np.asarray(rows, np.float32)
        table = pa.table({"key": pa.array(keys_, pa.string()),
                          "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()),
                                                                      2)})
        pq.write_table(table.replace_schema_metadata({"model_id": "m", "dim": "2"}),
                       folder / f"{name}.parquet")
    cache = EmbeddingCache(tmp_path, "m")
    found, vectors = cache.lookup(np.array(["c", "b", "a"]))
    assert found.all() and len(cache) == 3
    np.testing.assert_array_equal(vectors, [[4, 5], [2, 3], [0, 1]])
    cache.add(np.array(["d"]), np.ones((1, 2), np.float32))
    new = [p for p in folder.glob("*.parquet") if p.stem not in ("1", "2")]
    assert pq.read_schema(new[0]).equals(pq.read_schema(folder / "1.parquet"),
                                         check_metadata=True)


# ---------------------------------------------------------------------------- RatingCache


def test_rating_cache_round_trip(tmp_path: Path) -> None:
    cache = RatingCache(tmp_path, "r1")
    cache.put_many(["a", "b"], np.array([2.5, 4.0]), scope="s")
    cache.put_many(["b", "c"], np.array([1.0, 3.0]), scope="s")  # "b" is kept as first stored
    found, scores = RatingCache(tmp_path, "r1").get_many(["c", "x", "b", "a"], scope="s")
    np.testing.assert_array_equal(found, [True, False, True, True])
    np.testing.assert_array_equal(scores, [3.0, np.nan, 4.0, 2.5])
    assert not RatingCache(tmp_path, "r1").get_many(["a"], scope="other")[0].any()
    assert not RatingCache(tmp_path, "r2").get_many(["a"], scope="s")[0].any()
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(InputError, match="one score per text"):
        cache.put_many(["a"], np.array([1.0, 2.0]))
    with pytest.raises(InputError, match="NaN"):
        cache.put_many(["z"], np.array([np.nan]))
    with pytest.raises(InputError, match="one argmax per text"):
        cache.put_many(["z"], np.array([1.0]), argmax=np.array([1, 2]))
    with pytest.raises(InputError, match="probs must be"):
        cache.put_many(["z"], np.array([1.0]), probs=np.ones(3))


def test_rating_cache_keeps_argmax_and_probs_of_varying_widths(tmp_path: Path) -> None:
    cache = RatingCache(tmp_path, "r")
    cache.put_many(["a"], np.array([2.6]))  # argmax defaults to the rounded score
    cache.put_many(["b"], np.array([1.5]), argmax=np.array([1]), probs=np.array([[0.5, 0.5]]))
    cache.put_many(["c"], np.array([2.0]), probs=np.array([[0.0, 0.0, 1.0]]))
    found, expected, argmax, probs = RatingCache(tmp_path, "r").lookup(
        cache.keys(["a", "b", "c", "x"]))
    assert found.tolist() == [True, True, True, False] and len(cache) == 3
    np.testing.assert_array_equal(expected, [2.6, 1.5, 2.0, np.nan])
    np.testing.assert_array_equal(argmax, [3, 1, 2, -1])
    nan = np.nan
    np.testing.assert_array_equal(probs, [[nan] * 3, [0.5, 0.5, nan], [0, 0, 1], [nan] * 3])


def test_rating_shards_of_the_previous_layout_are_read(tmp_path: Path) -> None:
    cache = RatingCache(tmp_path, "hf")
    cache.folder.mkdir(parents=True)
    k = cache.keys(["a", "b", "c"])
    plain = pa.table({"key": pa.array(k[:1], pa.string()), "expected": [2.5],
                      "argmax": pa.array([2], pa.int64())})
    with_probs = pa.table({"key": pa.array(k[1:], pa.string()), "expected": [1.0, 2.0],
                           "argmax": pa.array([1, 2], pa.int64()),
                           "probs": pa.FixedSizeListArray.from_arrays(
                               pa.array([0.9, 0.1, 0.2, 0.8]), 2)})
    for name, table in (("1", plain), ("2", with_probs)):
        pq.write_table(table.replace_schema_metadata({"rater_id": "hf"}),
                       cache.folder / f"{name}.parquet")
    found, expected, argmax, probs = cache.lookup(k)
    assert found.all()
    np.testing.assert_array_equal(expected, [2.5, 1.0, 2.0])
    np.testing.assert_array_equal(argmax, [2, 1, 2])
    np.testing.assert_array_equal(probs, [[np.nan, np.nan], [0.9, 0.1], [0.2, 0.8]])


def test_an_unreadable_rating_shard_is_named(tmp_path: Path) -> None:
    cache = RatingCache(tmp_path, "r")
    cache.put_many(["a"], np.array([1.0]))
    bad = cache.folder / "broken.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(CrediflowError, match="unreadable rating cache shard .*broken"):
        RatingCache(tmp_path, "r").get_many(["a"])
