"""Files and folders a run writes get the mode a plain ``open()`` / ``mkdir()`` would give them
(0666 / 0777 minus the umask), so others on a shared machine can read a run and its cache."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import compose_config

from rlaif.io import atomic_write_text, write_json
from rlaif.journal import Journal
from rlaif.pipeline import run

# Not the usual 022: a mode hard-wired to 0644 would pass under 022 and must fail here.
UMASK = 0o002


@pytest.fixture
def umask():
    old = os.umask(UMASK)
    try:
        yield UMASK
    finally:
        os.umask(old)


def _plain_modes(tmp: Path) -> tuple[int, int]:
    """The modes a plain open() and mkdir() give under the current umask, found by doing them."""
    (tmp / "plain.txt").write_text("x")
    (tmp / "plain-dir").mkdir()
    return stat.S_IMODE((tmp / "plain.txt").stat().st_mode), stat.S_IMODE((tmp / "plain-dir").stat().st_mode)


def _wrong_modes(root: Path, file_mode: int, dir_mode: int) -> dict[str, str]:
    """Paths whose mode is not a plain write's. W&B's service process writes ``wandb/`` itself, with
    the umask it started under (it outlives one run), so there only readable-by-others is required."""
    wrong = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        for name, want in [*((d, dir_mode) for d in dirnames), *((f, file_mode) for f in filenames)]:
            p = Path(dirpath) / name
            mode = stat.S_IMODE(p.stat().st_mode)
            if p.relative_to(root).parts[0] == "wandb":
                if mode & 0o044 != 0o044:
                    wrong[str(p.relative_to(root))] = f"{mode:o} (not readable by group and others)"
                continue
            if mode != want:
                wrong[str(p.relative_to(root))] = f"{mode:o} (a plain write gives {want:o})"
    return wrong


def test_atomic_writes_get_the_mode_of_a_plain_write(umask, tmp_path):
    file_mode, _ = _plain_modes(tmp_path)
    assert file_mode == 0o666 & ~UMASK
    atomic_write_text(tmp_path / "a.txt", "new\n")
    write_json(tmp_path / "b.json", {"k": 1})
    (tmp_path / "c.txt").write_text("old\n")
    os.chmod(tmp_path / "c.txt", 0o600)
    atomic_write_text(tmp_path / "c.txt", "replaced\n")  # a rewrite gets the plain mode too
    Journal(tmp_path / "d.jsonl").append(0, ["item"], [{"r": 1}])
    for name in ["a.txt", "b.json", "c.txt", "d.jsonl"]:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == file_mode, name
    assert (tmp_path / "c.txt").read_text() == "replaced\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.txt", "d.jsonl", "plain-dir", "plain.txt"]


def test_every_file_of_a_tiny_run_and_its_cache_is_readable_by_others(umask, tiny_overrides, tmp_path):
    file_mode, dir_mode = _plain_modes(tmp_path)
    out = tmp_path / "run"
    run(compose_config([*tiny_overrides, "diagnostics=none"]), output_dir=out)
    named = ["summary.json", "manifest.json", "preferences.jsonl", "prompts.jsonl", "resolved_config.yaml",
             "progress.json"]
    for name in named:
        assert (out / name).is_file(), name
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > len(named)  # the walk below sees the whole run, W&B files and cache links included
    assert _wrong_modes(out, file_mode, dir_mode) == {}
    assert _wrong_modes(tmp_path / "cache", file_mode, dir_mode) == {}
