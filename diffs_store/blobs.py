"""Content-addressed storage for diff files.

A blob's id is the sha256 hex of its bytes, which is also the diff id, so the registry can
hand out ids without asking the store, and a blob can never be silently replaced by other
bytes under the same name. The store knows nothing about metadata or versions: those live
in the registry (Redis). Keeping the interface to put/get/exists/delete lets an object-store
backend (S3, GCS) slot in later without touching the registry.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

from diffs_store import errors

_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_TMP_PREFIX = ".tmp-"


class InvalidBlobId(errors.NotFound, ValueError):
    """The id is not 64 lowercase hex characters.

    A ``NotFound`` (no blob can have that id, so the service answers 404 without a special
    case) and a ``ValueError`` (it is bad input, and we refuse it before it reaches a path).
    """


def blob_id(data: bytes) -> str:
    """The id a blob with these bytes gets: sha256 hex, same as :func:`format.diff_id`."""
    return hashlib.sha256(data).hexdigest()


def check_id(blob_id: str) -> str:
    """Return ``blob_id`` if it is a well-formed id, else raise :class:`InvalidBlobId`.

    Ids end up in file paths and object keys; accepting only ``[0-9a-f]{64}`` rules out
    ``..``, separators and case aliases in one place.
    """
    if not isinstance(blob_id, str) or not _ID_RE.match(blob_id):
        raise InvalidBlobId(f"{blob_id!r} is not a blob id (expected 64 lowercase hex characters)")
    return blob_id


class BlobStore(ABC):
    """Immutable, content-addressed bytes. Implementations must make ``put`` atomic: a reader
    sees either no blob or the complete blob, never a prefix."""

    @abstractmethod
    def put(self, data: bytes) -> str:
        """Store ``data`` durably and return its id. Idempotent: same bytes, same id."""

    @abstractmethod
    def get(self, blob_id: str) -> bytes:
        """The blob's bytes; :class:`errors.NotFound` when absent."""

    @abstractmethod
    def exists(self, blob_id: str) -> bool:
        """Whether the blob is present."""

    @abstractmethod
    def delete(self, blob_id: str) -> None:
        """Remove the blob. Idempotent: deleting an absent blob is not an error."""

    def uri(self, blob_id: str) -> str:
        """A URI for the blob (``file://``, ``s3://``), for logs and presigned access."""
        raise NotImplementedError(f"{type(self).__name__} has no URIs")


class LocalBlobStore(BlobStore):
    """Blobs as files under ``root/ab/cdef...`` (two-level fan-out on the id's first byte).

    The fan-out keeps directories small (256 of them) when the store holds many diffs.
    Writes go to a temporary file in the target directory, are fsynced, then renamed over
    the final name and the directory is fsynced, so a crash leaves either the whole blob or
    nothing (plus, at worst, a stray ``.tmp-<pid>-*`` file that :meth:`ids` ignores and
    :meth:`clean_stale_temp` removes at the next start).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- paths ------------------------------------------------------------------------------

    def path(self, blob_id: str) -> Path:
        """Where the blob lives (whether or not it exists). Validates the id."""
        check_id(blob_id)
        return self.root / blob_id[:2] / blob_id[2:]

    def uri(self, blob_id: str) -> str:
        return self.path(blob_id).resolve().as_uri()

    # -- operations -------------------------------------------------------------------------

    def put(self, data: bytes) -> str:
        bid = blob_id(data)
        final = self.path(bid)
        if final.exists():
            # Content addressing: the file already holds exactly these bytes (it was written
            # atomically), so rewriting would only cost I/O.
            return bid
        directory = final.parent
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.root)  # make the new fan-out directory's entry durable
        fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o644)  # mkstemp's 0600 would hide blobs from other users
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(directory)
        return bid

    def get(self, blob_id: str) -> bytes:
        try:
            return self.path(blob_id).read_bytes()
        except FileNotFoundError:
            # No path in the message: it can reach an HTTP answer.
            raise errors.NotFound(f"no blob {blob_id} in the blob store") from None

    def exists(self, blob_id: str) -> bool:
        return self.path(blob_id).is_file()

    def delete(self, blob_id: str) -> None:
        p = self.path(blob_id)
        try:
            p.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(p.parent)
        # The fan-out directory is left in place even when empty: removing it would race a
        # concurrent put() that has just created it.

    def clean_stale_temp(self) -> list[Path]:
        """Remove temporary files left by writers that died (kill -9 mid-put); returns them.

        The writer's pid is in the name. A file is stale when that process is gone, or is
        this process (called at start, before this process has written anything: in a
        container the server is pid 1 at every start). Names without a pid come from an
        older version and are stale too.
        """
        removed = []
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.glob(f"{_TMP_PREFIX}*"):
                if _writer_alive(f.name):
                    continue
                try:
                    f.unlink()
                except FileNotFoundError:
                    continue
                removed.append(f)
        return removed

    def ids(self) -> Iterator[str]:
        """Every stored blob id (for orphan collection and audits); skips temporary files."""
        for sub in sorted(self.root.iterdir()):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sorted(sub.iterdir()):
                bid = sub.name + f.name
                if not f.name.startswith(_TMP_PREFIX) and _ID_RE.match(bid):
                    yield bid


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that named this temporary file is still running (and not us)."""
    pid_text = tmp_name[len(_TMP_PREFIX):].split("-", 1)[0]
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename/unlink inside it survives a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
