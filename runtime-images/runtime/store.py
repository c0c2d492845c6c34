"""A content-addressed engine store on a local directory (what a PVC or hostPath gives).

Layout under the root::

    engines/<EngineKey.digest()>/manifest.json + the engine file(s)
    requests/<request digest>.json     the summary of a finished build request
    locks/<digest>.lock                flock files; never removed (removing races with lockers)
    staging/<random>/                  engines being written

An engine directory appears only through one ``rename`` of a fully written staging directory,
so readers never see half an engine. Builders of one key serialise on an exclusive ``flock``;
where the filesystem ignores flock (some NFS setups), the rename still lets exactly one
engine win: renaming onto an existing non-empty directory fails, and the loser discards its copy.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from infleet.runtime.errors import StoreError
from infleet.runtime.manifest import MANIFEST_FILE, EngineKey, EngineManifest


class EngineStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            for sub in ("engines", "requests", "locks", "staging"):
                (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"engine store {root}: {e}") from e

    def engine_dir(self, key: EngineKey) -> Path:
        return self.root / "engines" / key.digest()

    def get(self, key: EngineKey) -> EngineManifest | None:
        """The manifest of the engine stored under ``key``, or None."""
        path = self.engine_dir(key) / MANIFEST_FILE
        if not path.is_file():
            return None
        try:
            manifest = EngineManifest.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as e:
            raise StoreError(f"engine store: unreadable manifest {path}: {e}") from e
        if manifest.key != key:
            raise StoreError(
                f"engine store: {path} holds key {manifest.key.digest()}, not {key.digest()}"
            )
        return manifest

    @contextlib.contextmanager
    def lock(self, digest: str) -> Iterator[None]:
        """Hold the exclusive lock of one key (or request) digest; blocks until free."""
        path = self.root / "locks" / f"{digest}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"engine store: cannot open lock {path}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def staging(self) -> Path:
        """A fresh private directory to write an engine into before `commit`."""
        return Path(tempfile.mkdtemp(dir=self.root / "staging"))

    def commit(self, staged: Path, manifest: EngineManifest) -> Path:
        """Move a written engine into place under its key; returns its final directory.

        When another builder won the race, the staged copy is discarded and the existing
        engine is kept (equal keys mean interchangeable engines).
        """
        (staged / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
        for f in staged.rglob("*"):
            if f.is_file():
                _fsync(f)
        _fsync(staged)
        final = self.engine_dir(manifest.key)
        try:
            staged.rename(final)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise StoreError(f"engine store: cannot move engine to {final}: {e}") from e
            shutil.rmtree(staged, ignore_errors=True)
        _fsync(final.parent)
        return final

    def get_request(self, digest: str) -> dict[str, object] | None:
        path = self.root / "requests" / f"{digest}.json"
        try:
            record = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None  # a bad record only costs a rebuild check
        return record if isinstance(record, dict) else None

    def put_request(self, digest: str, record: dict[str, object]) -> None:
        path = self.root / "requests" / f"{digest}.json"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(path)


def _fsync(path: Path) -> None:
    """Flush a file or directory entry, so a crash after commit cannot lose the engine."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
