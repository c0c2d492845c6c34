"""A content-addressed engine store on a local directory (what a PVC or hostPath gives),
optionally in front of a remote store (an S3 bucket: :mod:`infleet.runtime.s3store`).

Layout under the root::

    engines/<EngineKey.digest()>/manifest.json + the engine file(s)
    requests/<request digest>.json     the summary of a finished build request
    locks/<digest>.lock                flock files; never removed (removing races with lockers)
    staging/<random>/                  engines being written

An engine directory appears only through one ``rename`` of a fully written staging directory,
so readers never see half an engine. Builders of one key serialise on an exclusive ``flock``;
where the filesystem ignores flock (some NFS setups), the rename still lets exactly one
engine win: renaming onto an existing non-empty directory fails, and the loser discards its copy.

With a remote store, the local directory is a build's working copy (a pod's emptyDir): an
engine or request record missing here is looked up there (an engine is then downloaded and
verified into ``engines/``), and :meth:`EngineStore.publish` uploads the engine a build keeps,
before its request record, so a record never names an engine the remote lacks. Locks stay
local: builders in different pods may build one key twice, which the remote's commit protocol
tolerates.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from infleet.runtime.errors import StoreError
from infleet.runtime.fetch import sha256_file
from infleet.runtime.manifest import MANIFEST_FILE, EngineKey, EngineManifest


class RemoteStore(Protocol):
    """What the local store needs of a remote one (``S3EngineStore``)."""

    @property
    def uri(self) -> str: ...
    def manifest(self, engine: str) -> EngineManifest | None: ...
    def download(self, engine: str, dest_root: Path) -> Path | None: ...
    def upload(self, engine_dir: Path) -> EngineManifest: ...
    def get_request(self, digest: str) -> dict[str, object] | None: ...
    def put_request(self, digest: str, record: Mapping[str, object]) -> None: ...


class EngineStore:
    def __init__(self, root: Path, remote: RemoteStore | None = None) -> None:
        self.root = root
        self.remote = remote
        try:
            for sub in ("engines", "requests", "locks", "staging"):
                (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"engine store {root}: {e}") from e

    def engine_dir(self, key: EngineKey) -> Path:
        return self.root / "engines" / key.digest()

    def has(self, key: EngineKey) -> bool:
        """Whether the engine is stored here or in the remote (without downloading it)."""
        if (self.engine_dir(key) / MANIFEST_FILE).is_file():
            return True
        return self.remote is not None and self.remote.manifest(key.digest()) is not None

    def get(self, key: EngineKey) -> EngineManifest | None:
        """The manifest of the engine stored under ``key`` (downloaded from the remote store
        when only that has it), or None."""
        path = self.engine_dir(key) / MANIFEST_FILE
        if not path.is_file() and self.remote is not None:
            self.remote.download(key.digest(), self.root / "engines")
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
        engine is kept (equal keys mean interchangeable engines). The manifest records the
        sha256 of every file, so a copy of the engine elsewhere can be verified.
        """
        files = {f.relative_to(staged).as_posix(): f for f in sorted(staged.rglob("*"))
                 if f.is_file() and f.name != MANIFEST_FILE}
        manifest = manifest.model_copy(update={"files": {
            name: sha256_file(path) for name, path in files.items()}})
        for f in files.values():
            _fsync(f)
        (staged / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
        _fsync(staged / MANIFEST_FILE)
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

    def publish(self, key: EngineKey) -> None:
        """Upload a committed engine to the remote store (nothing without one)."""
        if self.remote is not None:
            self.remote.upload(self.engine_dir(key))

    def get_request(self, digest: str) -> dict[str, object] | None:
        path = self.root / "requests" / f"{digest}.json"
        try:
            record = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            record = None  # a bad record only costs a rebuild check
        if not isinstance(record, dict) and self.remote is not None:
            record = self.remote.get_request(digest)
        return record if isinstance(record, dict) else None

    def put_request(self, digest: str, record: dict[str, object]) -> None:
        path = self.root / "requests" / f"{digest}.json"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(path)
        if self.remote is not None:
            self.remote.put_request(digest, record)


def _fsync(path: Path) -> None:
    """Flush a file or directory entry, so a crash after commit cannot lose the engine."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
