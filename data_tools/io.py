"""Small file helpers shared by data_tools and rlhf: atomic writes and cross-process locks."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temporary directory beside `final`; rename it into place only on success.

    A kill mid-write leaves a `.tmp-*` directory behind, never a half-written `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~user_umask())  # mkstemp makes it 0600; give it the user's modes
    os.replace(tmp, path)


def user_umask() -> int:
    """The process's umask (reading it means setting it; it is put straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """An exclusive lock across processes (ranks building the same cached artefact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(out_dir: str | os.PathLike, spec: dict, manifest: str, build) -> Path:
    """Run `build(out_dir)` unless `out_dir/manifest` records the same `spec`.

    Shared cached artefacts (the demo data, the tiny model) are built by one process at a
    time; a changed spec rebuilds, so a run never uses stale files."""
    import json

    out_dir = Path(out_dir)
    with file_lock(out_dir.with_name(out_dir.name + ".lock")):
        recorded = out_dir / manifest
        if recorded.exists() and json.loads(recorded.read_text()) == spec:
            return out_dir
        build(out_dir)
        return out_dir
