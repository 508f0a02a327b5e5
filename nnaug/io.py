"""Files nnaug writes and reads back: atomic writes, atomic output folders, hashes, one-line errors.

Everything nnaug writes goes through a temp name beside the target and a rename, so a reader (or a
resumed run) never sees half a file or half a dataset.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from nnaug.errors import NnaugError

PARTIAL_SUFFIX = ".partial"


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (at most 200 characters), for an ``nnaug: error:`` line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def write_atomic(path: Path | str, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temp file beside ``path`` (same suffix, so savers pick the format), then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path | str, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path | str, content, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(content, indent=indent))


def json_safe(value):
    """``value`` as strict JSON: numpy numbers and arrays as Python ones, paths as strings, and a non-finite
    float (a failed metric, FRD of identical sets) as null; keys as strings. nnaug's one JSON encoder."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def load_json_or_none(path: Path | str) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable (a resumed run treats both as not done)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def file_lock(path: Path | str, waiting_message: str | None, wait: bool = True) -> Iterator[bool]:
    """Exclusive lock on ``path`` (the ``filelock`` package: fcntl on POSIX, msvcrt on Windows).

    ``wait``: block until it is free, saying ``waiting_message`` once if another process holds it, and yield
    True. ``wait=False``: yield False at once when another process holds it (the caller does something else,
    as a sweep worker takes the next run)."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            yield False
            return
        if waiting_message:
            print(f"nnaug: {waiting_message} (lock {path})", flush=True)
        lock.acquire()
    try:
        yield True
    finally:
        lock.release()


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def partial_dir(target: Path) -> Path:
    """Hidden work folder beside ``target`` (nnU-Net ignores names that do not start with ``Dataset``)."""
    return target.parent / f".{target.name}{PARTIAL_SUFFIX}"


@contextlib.contextmanager
def atomic_output_dir(target: Path, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """Build a folder in a hidden temp folder beside ``target`` and rename it into place when complete.

    An existing ``target`` is only replaced with ``overwrite``. With ``resume`` an earlier partial
    folder is reused (and kept if this run fails too); without it a failed run removes its partial.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise NnaugError(f"{target} already exists: pass --overwrite to replace it, or choose another ID/name")
    work = partial_dir(target)
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    except BaseException:
        if not resume:
            shutil.rmtree(work, ignore_errors=True)
        raise
    replace_dir(work, target)


def replace_dir(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an old ``target`` is moved aside first and deleted only afterwards."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
