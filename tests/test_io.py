"""comcoco.io: a file appears whole under its name or not at all, with or without an fsync each."""

from __future__ import annotations

import pytest

from comcoco.io import atomic_path, flush_filesystem, write_bytes_atomic


def test_atomic_path_renames_what_the_writer_wrote(tmp_path):
    target = tmp_path / "sub" / "table.parquet"
    with atomic_path(target, sync=False) as tmp:
        assert tmp.parent == target.parent and tmp.exists() and not target.exists()
        tmp.write_bytes(b"written by name")
    assert target.read_bytes() == b"written by name"
    assert [p.name for p in target.parent.iterdir()] == ["table.parquet"]


def test_a_failed_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.parquet"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_unsynced_writes_then_one_flush(tmp_path):
    for i in range(3):
        write_bytes_atomic(tmp_path / f"{i}.png", bytes([i]) * 10, sync=False)
    flush_filesystem(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "1.png", "2.png"]
    assert (tmp_path / "2.png").read_bytes() == b"\x02" * 10
