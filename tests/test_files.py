"""Atomic files and staged folders: whole or nothing, temporary files removed on any failure."""

from __future__ import annotations

import re
import stat

import pytest

from protocols.errors import OutputError
from protocols.files import atomic_file, atomic_write, cache_dir, refuse_non_empty, staged_folder


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "out.csv"
    atomic_write(path, "old")
    atomic_write(path, b"new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["out.csv"]


def test_atomic_file_removes_the_temporary_file_on_failure(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("previous")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk on fire")
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_atomic_file_keeps_the_suffix_and_sets_the_mode_exactly(tmp_path):
    path = tmp_path / "key.pem.gz"
    with atomic_file(path, mode=0o600) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".gz") and tmp.name.startswith(".")
        tmp.write_bytes(b"secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_staged_folder_appears_whole(tmp_path):
    out = tmp_path / "out"
    with staged_folder(out) as staging:
        (staging / "a.txt").write_text("a")
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (out / "a.txt").read_text() == "a"


def test_staged_folder_leaves_nothing_behind_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), staged_folder(out) as staging:
        (staging / "half.txt").write_text("a")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_staged_folder_refuses_a_non_empty_destination_before_any_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    entered = False
    message = re.escape(f"{out} exists and is not empty; choose another --out or delete it")
    with pytest.raises(OutputError, match=message), staged_folder(out, fix="choose another --out or delete it"):
        entered = True
    assert not entered
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "keep.txt").read_text() == "x"
    with pytest.raises(OSError):  # an OSError, as callers of the old FileExistsError expect
        refuse_non_empty(out)


def test_staged_folder_fills_an_empty_folder_or_replaces_when_asked(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with staged_folder(out) as staging:
        (staging / "first.txt").write_text("1")
    with staged_folder(out, replace=True) as staging:
        (staging / "second.txt").write_text("2")
    assert [p.name for p in out.iterdir()] == ["second.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDRT_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("FEDRT_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "fedrt")
