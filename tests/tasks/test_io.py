import pytest

from tasks.io import atomic_dir, write_json


def test_atomic_dir_replaces_the_folder_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # nothing changes until the block succeeds
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_atomic_dir_leaves_the_previous_output_on_failure(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("stage failed")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (target / "old.txt").read_text() == "old"


def test_write_json_is_whole_or_nothing(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_written_files_and_folders_follow_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "data.parquet").write_bytes(b"x")
        write_json(tmp_path / "reports" / "m.json", {"a": 1})
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "out") == 0o750
    assert mode(tmp_path / "out" / "data.parquet") == 0o640
    assert mode(tmp_path / "reports" / "m.json") == 0o640
