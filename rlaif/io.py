"""Small file helpers: atomic writes and JSONL records.

Writes go to a temporary file in the target folder and are renamed into place, so a killed
process never leaves a half-written file where a reader (or the cache) would trust it. A write
that fails because the disk, a quota or the file-size limit is full raises ``DiskFullError``
(an ``OSError``) naming the path and the free space; the old file, if any, is left as it was and
the temporary file is removed.

Files and folders made here get the mode a plain ``open()`` / ``mkdir()`` would give them (0666 /
0777 minus the umask), not the private 0600 / 0700 of ``tempfile``, so others on a shared machine
can read a run and its cache whenever the umask lets them.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlaif.types import Record, T

# ENOSPC: no space left; EDQUOT: over quota; EFBIG: over the file-size limit (ulimit -f)
DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if e is not None)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


class DiskFullError(OSError):
    """A write failed because the disk, a quota or the file-size limit is full."""

    def __init__(self, path: str | Path, cause: OSError, what: str | None = None):
        path = Path(path)
        try:
            free = f"{shutil.disk_usage(_existing_parent(path)).free / 2**20:,.1f} MiB free there now"
        except OSError:
            free = "free space unknown"
        reason = {errno.EFBIG: "the file-size limit (ulimit -f) was reached"}.get(
            cause.errno, "the disk (or your quota) is full")
        target = f"{what} ({path})" if what else str(path)
        message = (f"disk full: could not write {target}: {reason} ({cause.strerror}; {free}). Nothing "
                   "half-written was left behind (an existing file keeps its old content). Free some space, or "
                   "write elsewhere: cache.dir=... for the cache, hydra.run.dir=... for the run folder")
        super().__init__(cause.errno, message, str(path))

    def __str__(self) -> str:
        return self.strerror


def _existing_parent(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (changing it, even for a
    moment, would give files another thread creates meanwhile the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def plain_mode(is_dir: bool = False, executable: bool = False) -> int:
    """The mode a plain ``open()`` (or ``mkdir()``) creates under the current umask."""
    return (0o777 if is_dir or executable else 0o666) & ~current_umask()


def give_plain_modes(root: str | Path) -> None:
    """Set every file and folder under ``root`` (and ``root``) to the mode a plain write would
    give it, for trees written by libraries that create private files (safetensors writes 0600)."""
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                os.chmod(p, plain_mode(executable=bool(p.stat().st_mode & 0o111)))
        for name in dirnames:
            if not (Path(dirpath) / name).is_symlink():
                os.chmod(Path(dirpath) / name, plain_mode(is_dir=True))
    os.chmod(root, plain_mode(is_dir=True))


def _temp_name(parent: Path, prefix: str, suffix: str) -> Path:
    return parent / f"{prefix}{secrets.token_hex(6)}{suffix}"


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new uniquely named folder in ``parent`` with a plain mkdir's mode (``tempfile.mkdtemp``
    makes it 0700, which a rename into place would keep)."""
    while True:
        p = _temp_name(Path(parent), prefix, "")
        try:
            os.mkdir(p, 0o777)  # the umask applies, as for any mkdir
            return p
        except FileExistsError:
            continue


def _open_temp_file(parent: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    while True:
        p = _temp_name(parent, prefix, suffix)
        try:
            return os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), p  # the umask applies
        except FileExistsError:
            continue


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temp_file(path.parent, f".{path.name}.", ".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(path, e) from e
        raise


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, allow_nan=False, default=_default)


def _default(obj: Any) -> Any:
    if isinstance(obj, Record):
        return obj.to_dict()
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True, default=_default) + "\n")


def write_records(path: str | Path, records: Iterable[Record | dict]) -> None:
    lines = [dumps(r.to_dict() if isinstance(r, Record) else r) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a malformed line raises naming the file and the line number."""
    return [row for _, row in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file, for errors that name the line."""
    path = Path(path)
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8; re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


def read_records(path: str | Path, cls: type[T]) -> list[T]:
    return [cls.from_dict(row) for row in read_jsonl(path)]
