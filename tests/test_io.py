"""comcoco.io: a file appears whole under its name or not at all, with or without an fsync each."""

from __future__ import annotations

import pytest

from comcoco.io import OncePerFile, atomic_path, flush_filesystem, sha256_file, write_bytes_atomic


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


def test_a_file_under_two_names_is_hashed_once(tmp_path, monkeypatch):
    import os

    import comcoco.io as io

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"shared bytes")
    os.link(a, b)
    c.write_bytes(b"shared bytes")  # the same bytes, another file: read on its own
    reads = []
    monkeypatch.setattr(io, "sha256_file", lambda p: reads.append(p) or sha256_file(p))
    hashes = OncePerFile()
    assert hashes.sha256(a) == hashes.sha256(b) == hashes.sha256(c) == sha256_file(a)
    assert reads == [a, c]
    os.unlink(b)
    b.write_bytes(b"now different")  # a new file under the old name
    assert hashes.sha256(b) == sha256_file(b) != sha256_file(a) and reads[-1] == b
