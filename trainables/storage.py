"""A folder of a local disk or an object store (`s3://`, `gs://`), as workers and the driver read it.

Ray Tune and Ray Train write trial results and checkpoints there themselves (through pyarrow's
filesystems); what the driver writes (run.json, leaderboards, reports) goes through `Storage`.
Every file is written whole or not at all: a local file through a temporary file and a rename,
an object-store file by a single upload, which readers never see half done.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from trainables.errors import UserError

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://")


def is_remote(storage: str) -> bool:
    return storage.startswith(REMOTE_SCHEMES)


# AWS SDKs' standard retry mode: 3 attempts, with backoff (pyarrow's default for an S3FileSystem it
# is asked to make, but not for one `FileSystem.from_uri` makes: that one retries a connection that
# fails for 6 s, in every call, so an endpoint that is down took 6 s per read or write to name)
S3_RETRIES = pafs.AwsStandardS3RetryStrategy(max_attempts=3)


def remote_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem of an object-store URI, and the path in it; an S3 one retries as
    AWS's SDKs do by default (`S3_RETRIES`), its other options from the URI and the environment."""
    fs, path = pafs.FileSystem.from_uri(uri)
    if isinstance(fs, pafs.S3FileSystem):
        _, (options,) = fs.__reduce__()  # the options that pickling it would keep
        fs = pafs.S3FileSystem(**{**options, "retry_strategy": S3_RETRIES})
    return fs, path


def ray_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """The `storage_path` and `storage_filesystem` that Ray Tune and Ray Train are given for a
    storage: a local folder as it is, an object store as `remote_filesystem` opens it."""
    if not is_remote(uri):
        return uri, None
    fs, path = remote_filesystem(uri)
    return path, fs


class StorageError(UserError):
    """Storage that cannot be reached or written: says where, why, and what was kept."""


class Storage:
    """One folder of a storage, local or remote, addressed by paths relative to it."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        try:
            if is_remote(uri):
                self.fs, self.root = remote_filesystem(self.uri)
            else:
                self.fs, self.root = pafs.LocalFileSystem(), str(Path(uri))
        except (OSError, ValueError) as err:
            raise StorageError(f"storage {uri}: {reason(err)}") from None

    @property
    def remote(self) -> bool:
        return is_remote(self.uri)

    def child(self, name: str) -> Storage:
        return Storage(f"{self.uri}/{name}")

    def uri_of(self, relative: str) -> str:
        return f"{self.uri}/{relative}" if relative else self.uri

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def exists(self, relative: str = "") -> bool:
        info = self._call("read", relative, self.fs.get_file_info, self._path(relative))
        return info.type != pafs.FileType.NotFound

    def read_text(self, relative: str) -> str:
        def read() -> bytes:
            with self.fs.open_input_stream(self._path(relative)) as stream:
                return stream.read()

        return self._call("read", relative, read).decode()

    def write_atomic(self, relative: str, data: bytes) -> None:
        """The file holds `data` after this, or its old content if the write failed."""
        target = self._path(relative)
        if not self.remote:
            self._call("write", relative, _replace_local, Path(target), data)
            return

        def upload() -> None:
            with self.fs.open_output_stream(target) as stream:
                stream.write(data)

        self._call("write", relative, upload)

    def listdir(self, relative: str = "") -> list[str]:
        """Names of the folders and files directly in `relative` (none if it does not exist)."""
        selector = pafs.FileSelector(self._path(relative), allow_not_found=True)
        infos = self._call("list", relative, self.fs.get_file_info, selector)
        return sorted(info.base_name for info in infos)

    def files(self, relative: str = "") -> list[str]:
        """Paths (relative to `relative`) of every file below it, in one listing."""
        return sorted(self.sizes(relative))

    def sizes(self, relative: str = "") -> dict[str, int]:
        """Size of every file below `relative`, by path relative to it, in one listing."""
        base = self._path(relative)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        infos = self._call("list", relative, self.fs.get_file_info, selector)
        return {info.path[len(base) + 1 :]: info.size for info in infos if info.type == pafs.FileType.File}

    def upload(self, local: Path, relative: str = "", last: str | None = None) -> None:
        """Copy a local file to `relative`, or a local folder (recursively) into it, the file named
        `last` last; each file is written atomically."""
        if local.is_file():
            self.write_atomic(relative or local.name, local.read_bytes())
            return
        files = (p for p in local.rglob("*") if p.is_file())
        for path in sorted(files, key=lambda path: (path.name == last, str(path))):
            inner = path.relative_to(local).as_posix()
            self.write_atomic(f"{relative}/{inner}" if relative else inner, path.read_bytes())

    def download(self, relative: str, local: Path) -> Path:
        """Copy the folder `relative` (recursively) to `local`; return `local`."""
        local.mkdir(parents=True, exist_ok=True)
        self._call(
            "read",
            relative,
            pafs.copy_files,
            self._path(relative),
            str(local),
            source_filesystem=self.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )
        return local

    def delete(self, relative: str) -> None:
        """Remove the file `relative`, if it is there."""
        if self.exists(relative):
            self._call("delete", relative, self.fs.delete_file, self._path(relative))

    def delete_folder(self, relative: str) -> None:
        """Remove the folder `relative` and everything in it, if it is there."""
        if self.exists(relative):
            self._call("delete", relative, self.fs.delete_dir, self._path(relative))

    def check_writable(self) -> None:
        """Fail before any work when the storage cannot take a file."""
        probe = f".write-check-{os.getpid()}"
        self.write_atomic(probe, b"ok")
        self.delete(probe)

    def _call(self, action: str, relative: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except OSError as err:
            raise StorageError(f"cannot {action} {self.uri_of(relative)}: {reason(err)}") from None


def _replace_local(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def reason(err: BaseException) -> str:
    """One line saying why a storage operation failed."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return "no space left on the device; free some space or choose another --storage"
    text = " ".join(str(err).split())
    return text[:300] or type(err).__name__
