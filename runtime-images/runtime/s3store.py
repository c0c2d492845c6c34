"""The engine store on an S3-compatible bucket: the same content-addressed engines as
:mod:`infleet.runtime.store`, kept as objects.

Layout under ``s3://BUCKET/PREFIX/``::

    infleet-store.json              marks the prefix as a store (layout version); the first
                                    builder writes it
    engines/<key>/manifest.json     the engine's manifest, naming each file with its sha256
    engines/<key>/blobs/<sha256>    each file's bytes, addressed by their content
    requests/<digest>.json          the summary of a finished build request

**Commit protocol.** S3 has no rename and no lock, so atomicity comes from ordering and
content addressing: an uploader puts every blob first, then the manifest, one PUT each (a PUT
is atomic: readers see the old object or the new one, never a part). A reader starts from the
manifest: without one the engine is absent, whatever blobs lie there (an upload that died
half way); with one, every blob it names is complete, because it was written before. Two
uploaders of one key (builds of one model in two namespaces) never overwrite each other's
bytes: their blobs have different names unless their content is equal, so whichever manifest
is written last names a complete, consistent set. A request record is written after its
engine's manifest, and is trusted only when that manifest is there.

**Downloads** (a serving pod's init container, a build reusing a stored rung) write each file
under a staging folder, check its sha256 against the manifest, write the manifest last and
rename the folder into place: a local engine directory is complete or absent, as in the local
store.

Credentials and endpoint come from the environment (:func:`store_config`); nothing here reads
a Kubernetes Secret.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from infleet.runtime import s3
from infleet.runtime.errors import FetchError, StoreError
from infleet.runtime.fetch import Retries, sha256_file
from infleet.runtime.manifest import MANIFEST_FILE, EngineManifest
from infleet.runtime.objectstore import ObjectStore

LAYOUT = 1
MARKER = "infleet-store.json"
ENV_PREFIX = "INFLEET_STORE_"
"""The operator hands the store's Secret to pods with this prefix (``envFrom``), so the
store's credentials and endpoint never mix with the ``AWS_*`` ones an ``s3://`` model fetch
uses."""
SECRET_ENV = "INFLEET_STORE_SECRET"  # noqa: S105 - a variable name, not a password
"""The name of that Secret, set by the operator, so an error can name it."""
MAX_ENGINE_FILE_BYTES = 64 << 30
_S3_URI = re.compile(
    r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?P<prefix>(/[A-Za-z0-9_][A-Za-z0-9._-]*)*)/?$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = re.compile(r"^[0-9a-f]{16,64}$")


# --- the pure part: where things are --------------------------------------------------------


@dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str
    """Without slashes at either end; empty for the bucket's root."""

    @classmethod
    def parse(cls, uri: str) -> Location:
        match = _S3_URI.match(uri)
        if match is None:
            raise StoreError(
                f"{uri}: expected s3://BUCKET[/PREFIX] (a bucket name of lowercase letters, "
                "digits, dots and dashes; a prefix of letters, digits and ._-)")
        return cls(match["bucket"], match["prefix"].strip("/"))

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def manifest(self, engine: str) -> str:
        return self.key("engines", _checked_digest(engine), MANIFEST_FILE)

    def blob(self, engine: str, sha256: str) -> str:
        return self.key("engines", _checked_digest(engine), "blobs", sha256)

    def request(self, digest: str) -> str:
        return self.key("requests", f"{_checked_digest(digest)}.json")


def _checked_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise StoreError(f"not an engine or request digest: {digest!r}")
    return digest


def store_config(env: Mapping[str, str]) -> s3.S3Config:
    """The store's S3 settings: the ``INFLEET_STORE_AWS_*`` variables when any is set (what
    the operator gives its pods), else the standard ``AWS_*`` ones (a person building by
    hand). A store needs credentials: without them the error names the Secret to check."""
    prefixed = {k.removeprefix(ENV_PREFIX): v for k, v in env.items()
                if k.startswith(ENV_PREFIX + "AWS_")}
    try:
        config = s3.S3Config.from_env(prefixed or env)
    except FetchError as e:
        raise StoreError(f"engine store: {e}") from e
    if config.credentials is None:
        secret = env.get(SECRET_ENV)
        where = (f"the Secret {secret!r} (engineStoreSecret) in this namespace, with keys "
                 "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: is it there?") if secret else (
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        raise StoreError(f"engine store: no credentials; they come from {where}")
    return config


def engine_files(manifest: EngineManifest) -> dict[str, str]:
    """The files a manifest names, checked: relative paths inside the engine's folder (a
    manifest read from a bucket must not write elsewhere), each with a sha256, the engine
    file among them."""
    if not manifest.files:
        raise StoreError(f"engine {manifest.key.digest()}: its manifest lists no files")
    for name, sha in manifest.files.items():
        path = PurePosixPath(name)
        if (not name or path.is_absolute() or ".." in path.parts or name == MANIFEST_FILE
                or "\\" in name):
            raise StoreError(f"engine {manifest.key.digest()}: bad file name {name!r}")
        if not _SHA256.match(sha):
            raise StoreError(f"engine {manifest.key.digest()}: bad sha256 for {name!r}")
    if manifest.engine_file not in manifest.files:
        raise StoreError(f"engine {manifest.key.digest()}: its manifest does not list the "
                         f"engine file {manifest.engine_file!r}")
    return dict(manifest.files)


# --- the store ------------------------------------------------------------------------------


class S3EngineStore:
    """Engines and request records under one ``s3://BUCKET/PREFIX``."""

    def __init__(self, uri: str, env: Mapping[str, str], retries: Retries | None = None) -> None:
        self.location = Location.parse(uri)
        self.objects = ObjectStore(self.location.bucket, store_config(env), retries)

    @property
    def uri(self) -> str:
        return self.location.uri

    def close(self) -> None:
        self.objects.close()

    def __enter__(self) -> S3EngineStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def check(self, write: bool) -> None:
        """Reach the store once, before any work: a wrong endpoint, bucket or credentials
        fail here in a second instead of after a build. ``write`` also proves that the
        credentials may write (the first writer leaves the marker)."""
        key = self.location.key(MARKER)
        raw = self.objects.get(key)
        if raw is None:
            if write:
                self.objects.put_bytes(key, json.dumps({"layout": LAYOUT}).encode())
            return
        try:
            layout = json.loads(raw).get("layout")
        except (ValueError, AttributeError):
            layout = None
        if layout != LAYOUT:
            raise StoreError(f"{self.uri}: {MARKER} says layout {layout!r}; this infleet "
                             f"reads layout {LAYOUT}")

    def manifest(self, engine: str) -> EngineManifest | None:
        """The manifest of an engine; None when it is absent (no manifest: never committed)."""
        raw = self.objects.get(self.location.manifest(engine))
        if raw is None:
            return None
        try:
            manifest = EngineManifest.model_validate_json(raw)
        except ValidationError as e:
            raise StoreError(f"{self.uri}: unreadable manifest of engine {engine}: {e}") from e
        if manifest.key.digest() != engine:
            raise StoreError(f"{self.uri}: the manifest under engine {engine} holds key "
                             f"{manifest.key.digest()}")
        return manifest

    def download(self, engine: str, dest_root: Path) -> Path | None:
        """The engine's folder ``dest_root/<engine>``, downloaded and verified unless it is
        there already (a folder appears only complete); None when the store has no such
        engine."""
        final = dest_root / engine
        if (final / MANIFEST_FILE).is_file():
            return final
        manifest = self.manifest(engine)
        if manifest is None:
            return None
        files = engine_files(manifest)
        dest_root.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{engine}.", dir=dest_root))
        try:
            for name, sha in files.items():
                path = staged / name
                path.parent.mkdir(parents=True, exist_ok=True)
                got, _ = self.objects.download(self.location.blob(engine, sha), path,
                                               MAX_ENGINE_FILE_BYTES)
                if got != sha:
                    raise StoreError(f"engine {engine}: {name} downloaded with sha256 {got}, "
                                     f"its manifest says {sha}")
            (staged / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
            # Readable like a volume's files, whatever user the server container runs as.
            for path in staged.rglob("*"):
                path.chmod(0o755 if path.is_dir() else 0o644)
            staged.chmod(0o755)
            try:
                staged.rename(final)
            except OSError:
                if not (final / MANIFEST_FILE).is_file():  # not a lost race: a real fault
                    raise
        except OSError as e:
            raise StoreError(f"engine {engine}: cannot write {dest_root}: {e}") from e
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return final

    def upload(self, engine_dir: Path) -> EngineManifest:
        """Put a committed local engine into the store: its blobs, then its manifest. A
        manifest already there means the engine is stored (equal keys, interchangeable
        engines): nothing is written."""
        try:
            manifest = EngineManifest.model_validate_json((engine_dir / MANIFEST_FILE)
                                                          .read_bytes())
        except (OSError, ValidationError) as e:
            raise StoreError(f"cannot read the engine to upload in {engine_dir}: {e}") from e
        engine = manifest.key.digest()
        existing = self.manifest(engine)
        if existing is not None:
            return existing
        if not manifest.files:  # committed before manifests listed their files
            manifest = manifest.model_copy(update={"files": {
                f.relative_to(engine_dir).as_posix(): sha256_file(f)
                for f in sorted(engine_dir.rglob("*")) if f.is_file() and f.name != MANIFEST_FILE
            }})
        for name, sha in engine_files(manifest).items():
            blob = self.location.blob(engine, sha)
            if not self.objects.exists(blob):
                self.objects.put_file(blob, engine_dir / name, sha)
        self.objects.put_bytes(self.location.manifest(engine),
                               manifest.model_dump_json(indent=2).encode())
        return manifest

    def get_request(self, digest: str) -> dict[str, object] | None:
        raw = self.objects.get(self.location.request(digest))
        with contextlib.suppress(ValueError):
            record = json.loads(raw) if raw is not None else None
            return record if isinstance(record, dict) else None
        return None  # a bad record only costs a rebuild check

    def put_request(self, digest: str, record: Mapping[str, object]) -> None:
        self.objects.put_bytes(self.location.request(digest),
                               json.dumps(record, indent=2).encode())
