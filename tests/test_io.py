"""Atomic directory writes: the target is either the old directory or the complete new one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import transformer.io
from transformer.io import atomic_directory, unfinished_directories


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_the_block_fills_a_hidden_sibling_that_then_becomes_the_target(tmp_path: Path) -> None:
    out = tmp_path / "deeper" / "out"
    with atomic_directory(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".out.tmp-")
        assert not out.exists()  # nothing visible under the final name while it is written
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
    assert (out / "a.txt").read_text() == "a" and (out / "sub" / "b.txt").read_text() == "b"
    assert names(out.parent) == ["out"]


def test_every_file_is_fsynced_before_the_rename(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    synced: list[tuple[str, ...]] = []
    real = transformer.io.fsync_tree

    def fsync_tree(directory):
        assert not out.exists()  # before the rename
        synced.append(tuple(sorted(p.name for p in Path(directory).rglob("*"))))
        real(directory)

    monkeypatch.setattr(transformer.io, "fsync_tree", fsync_tree)
    with atomic_directory(out) as tmp:
        (tmp / "model.bin").write_bytes(b"1")
    assert synced == [("model.bin",)]


def test_an_existing_target_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_directory(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert names(out) == ["new.txt"]
    assert names(tmp_path) == ["out"]  # the old directory moved aside is gone too


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_target_and_no_temporary(
    tmp_path: Path, error: BaseException
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(type(error)), atomic_directory(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise error
    assert names(tmp_path) == ["out"]
    assert names(out) == ["old.txt"] and (out / "old.txt").read_text() == "old"


def test_a_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic_directory(tmp_path / "out") as tmp:
        (tmp / "half.txt").write_text("half")
        raise ValueError("bad input")
    assert names(tmp_path) == []


def test_the_directory_gets_the_umask_permissions_not_private_ones(
    tmp_path: Path, umask_027
) -> None:
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o750
    assert stat.S_IMODE(out.stat().st_mode) == 0o750


def test_what_a_killed_writer_left_is_found(tmp_path: Path) -> None:
    writing = atomic_directory(tmp_path / "step_00000010")
    tmp = writing.__enter__()  # the process dies here: the block never ends
    (tmp / "model.safetensors").write_bytes(b"half")
    (tmp_path / "step_00000005").mkdir()
    (tmp_path / ".other.tmp-x").mkdir()  # an unfinished write of another kind of output
    assert unfinished_directories(tmp_path, "step_*") == [tmp]
    assert set(unfinished_directories(tmp_path)) == {tmp, tmp_path / ".other.tmp-x"}
    assert unfinished_directories(tmp_path / "missing") == []
