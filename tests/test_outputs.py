"""Output paths: default names that stay valid file names, and atomic, umask-respecting writes."""

from __future__ import annotations

import errno
import os

import pytest

from attnviz.outputs import atomic_output, default_name, output_path, write_error


def test_long_default_names_are_cut_readably_with_a_hash(tmp_path):
    model = "m" * 240  # a model folder with a 240-character name
    name = default_name("heatmap", "emily-always", model, "L1", "H5")
    assert len(name) <= 120 and name.endswith("-L1-H5.png") and name.startswith("heatmap-emily-always-mmm")
    other = default_name("heatmap", "emily-always", model + "x", "L1", "H5")
    assert other != name and len(other) == len(name)  # the hash tells cut names apart
    path = output_path(None, ("heatmap", "emily-always", model, "L1", "H5"))  # was: File name too long
    assert path.exists() and path.name == name
    assert default_name("heatmap", "short", "minilm") == "heatmap-short-minilm.png"  # short names unchanged


def test_atomic_output_renames_only_when_complete(tmp_path):
    target = tmp_path / "sub" / "x.bin"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"done")
        assert not target.exists()
    assert target.read_bytes() == b"done"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"done" and sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_output_modes_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        with atomic_output(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_output(tmp_path / "d", folder=True) as tmp:
            (tmp / "inner.txt").write_text("x")
    finally:
        os.umask(old)
    assert oct((tmp_path / "f.txt").stat().st_mode & 0o777) == oct(0o666 & ~mask)
    assert oct((tmp_path / "d").stat().st_mode & 0o777) == oct(0o777 & ~mask)
    assert oct((tmp_path / "d" / "inner.txt").stat().st_mode & 0o777) == oct(0o666 & ~mask)


def test_write_error_names_a_full_disk(tmp_path):
    message = write_error(tmp_path / "y.npz", OSError(errno.ENOSPC, "No space left on device"))
    assert message.startswith("no space left on the device to write") and "y.npz" in message
    assert write_error(tmp_path / "y.npz", OSError(errno.EACCES, "Permission denied")).endswith(
        "Permission denied"
    )
