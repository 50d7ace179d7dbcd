"""atomic_path: the target is replaced whole on success and left as it was on failure."""
from __future__ import annotations

import pytest

from atomic import atomic_path


def test_success_replaces_the_target_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "out.csv"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
        assert not target.exists()  # nothing visible under the real name until the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.csv"]


def test_failure_keeps_the_old_file_and_removes_the_partial_one(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_the_file_gets_the_mode_a_plain_open_gives(tmp_path):
    """A writer that makes its file 0600 (safetensors does) still leaves a file others may read,
    as every other output is (a shared cluster cache)."""
    import os

    target = tmp_path / "weights.safetensors"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"x")
        os.chmod(tmp, 0o600)
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
