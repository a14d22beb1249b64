"""Where a sweep's results live: a local folder or a URI (`s3://`, `gs://`, `file://`).

Reading and writing go through `trainables.storage.Storage` (workers read checkpoints with it
too); this module adds what only the driver does: resolving a location the user typed, and
local copies of remote checkpoints and datasets.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from trainables.errors import UserError
from trainables.storage import REMOTE_SCHEMES, Storage, StorageError, is_remote, reason

__all__ = [
    "Storage",
    "StorageError",
    "download_whole",
    "is_remote",
    "local_copy",
    "normalise",
    "reason",
    "staging_dir",
]


def normalise(location: str, base: Path) -> str:
    """A location as Ray takes it: URIs kept, `file://` and relative paths made absolute paths."""
    if location.startswith("file://"):
        return str(Path(location[len("file://") :]).resolve())
    if "://" in location:
        if not location.startswith(REMOTE_SCHEMES):
            scheme = location.split("://")[0]
            raise UserError(
                f"{location!r}: unknown scheme '{scheme}://'; use a path, s3://, gs:// or file://"
            )
        return location.rstrip("/")
    return str((base / Path(location).expanduser()).resolve())


def local_copy(location: str, cache: Path) -> Path:
    """A local folder holding `location` (a path, or a URI downloaded once into `cache`)."""
    if not is_remote(location):
        return Path(location)
    target = cache / location.split("://", 1)[1]
    if not target.is_dir():
        parent, _, name = location.rpartition("/")
        download_whole(Storage(parent), name, target)
    return target


def download_whole(storage: Storage, relative: str, target: Path) -> None:
    """Download the folder `relative` to `target`, which appears only once all of it is there (a
    download cut short leaves no folder that looks complete); a `target` that another process
    completed first is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        storage.download(relative, partial)
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def staging_dir(run_name: str) -> Path:
    """Where the driver puts its own outputs for a remote run before uploading them (kept until
    the upload succeeded, so that nothing is lost when the storage fails)."""
    return Path(tempfile.gettempdir()) / "isic-backbone-sweep" / run_name
