"""One storage layer for local paths and ``s3://`` URIs.

Every function takes a *URI*: a local path (absolute or relative, ``file://`` allowed) or
``s3://bucket/key``. S3 access honours the standard AWS environment: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for any S3-compatible store, the usual credential chain, and
``AWS_REGION`` / ``AWS_DEFAULT_REGION``. pyarrow filesystems do the I/O; boto3 is used only where
an S3 API call is needed (bucket creation in tests and tools).

Writes are committed atomically: a local file is written under a temporary name in the same
folder and renamed into place; an S3 object becomes visible only when its single PUT completes.
Multi-file outputs (snapshots, exports) commit by writing a marker file (a manifest) last.

This module imports nothing from cocoseg (layer L0).
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

__all__ = [
    "FileEntry",
    "StorageError",
    "copy_file",
    "delete",
    "download_dir",
    "exists",
    "filesystem",
    "is_s3",
    "join",
    "list_files",
    "local_copy",
    "makedirs",
    "read_bytes",
    "read_json",
    "read_text",
    "s3_client",
    "upload_dir",
    "write_bytes",
    "write_json",
    "write_text",
]


class StorageError(OSError):
    """A storage operation failed; the message names the URI."""


@dataclass(frozen=True)
class FileEntry:
    uri: str
    size: int
    mtime_ns: int = 0  # last modification (S3: LastModified); 0 where the store gives none


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def _strip_file_scheme(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` for URIs and the OS separator for local paths."""
    base = str(base)
    if is_s3(base):
        return posixpath.join(base, *[p.strip("/") for p in parts])
    return os.path.join(_strip_file_scheme(base), *parts)


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


_S3_CACHE: dict[tuple[Any, ...], pafs.S3FileSystem] = {}


def _s3_filesystem() -> pafs.S3FileSystem:
    endpoint = _endpoint()
    key = (endpoint, _region(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
    fs = _S3_CACHE.get(key)
    if fs is None:
        kwargs: dict[str, Any] = {"region": _region()}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs["endpoint_override"] = host or scheme
            kwargs["scheme"] = scheme if host else "https"
        access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if access and secret:
            kwargs.update(access_key=access, secret_key=secret,
                          session_token=os.environ.get("AWS_SESSION_TOKEN"))
        fs = pafs.S3FileSystem(**kwargs)
        _S3_CACHE[key] = fs
    return fs


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """``uri`` -> (pyarrow filesystem, path inside it). S3 paths are ``bucket/key``."""
    uri = str(uri)
    if is_s3(uri):
        return _s3_filesystem(), uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(_strip_file_scheme(uri))


def s3_client():
    """A boto3 S3 client configured from the same environment as :func:`filesystem`."""
    import boto3

    return boto3.client("s3", endpoint_url=_endpoint(), region_name=_region())


def _wrap(uri: str, action: str, exc: BaseException) -> StorageError:
    return StorageError(f"{action} {uri}: {exc}")


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise _wrap(uri, "cannot stat", exc) from None


def is_dir(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    if not is_s3(uri):  # S3 has no folders; creating markers only confuses listings
        fs.create_dir(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    if not is_s3(uri):  # plain open(): ~3x cheaper per small file than a pyarrow stream
        try:
            with open(os.path.abspath(_strip_file_scheme(str(uri))), "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"{uri} does not exist") from None
        except OSError as exc:
            raise _wrap(uri, "cannot read", exc) from None
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} does not exist") from None
    except OSError as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            raise FileNotFoundError(f"{uri} does not exist") from None
        raise _wrap(uri, "cannot read", exc) from None


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    text = read_text(uri)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{uri}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically (readers see the old file or the whole new one)."""
    fs, path = filesystem(uri)
    try:
        if is_s3(uri):
            with fs.open_output_stream(path) as f:  # one PUT/multipart upload: visible when complete
                f.write(data)
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _wrap(uri, "cannot write", exc) from None


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def list_files(uri: str, recursive: bool = True, suffix: str | None = None) -> list[FileEntry]:
    """Files under ``uri`` (sorted by URI). A missing folder lists as empty."""
    fs, path = filesystem(uri)
    selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
    try:
        infos = fs.get_file_info(selector)
    except OSError as exc:
        raise _wrap(uri, "cannot list", exc) from None
    out = []
    for info in infos:
        if not info.is_file:  # (not `info.type`: building the enum per entry is slow on big listings)
            continue
        if suffix and not info.path.endswith(suffix):
            continue
        full = f"s3://{info.path}" if is_s3(uri) else info.path
        out.append(FileEntry(uri=full, size=int(info.size or 0), mtime_ns=int(info.mtime_ns or 0)))
    return sorted(out, key=lambda e: e.uri)


def delete(uri: str, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        if recursive and is_s3(uri):  # S3 "folders" exist only through their keys
            fs.delete_dir_contents(path, missing_dir_ok=True)
        return
    if info.type == pafs.FileType.Directory:
        if not recursive:
            raise StorageError(f"cannot delete {uri}: it is a folder (pass recursive=True)")
        fs.delete_dir(path)
    else:
        fs.delete_file(path)


def copy_file(src: str, dst: str) -> None:
    write_bytes(dst, read_bytes(src))


def upload_dir(local_dir: str | Path, uri: str) -> list[str]:
    """Copy every file under ``local_dir`` to ``uri`` (same relative layout)."""
    local_dir = Path(local_dir)
    written = []
    for p in sorted(local_dir.rglob("*")):
        if p.is_file():
            dst = join(uri, *p.relative_to(local_dir).parts)
            write_bytes(dst, p.read_bytes())
            written.append(dst)
    return written


def download_dir(uri: str, local_dir: str | Path) -> Path:
    local_dir = Path(local_dir)
    prefix = filesystem(uri)[1]
    for entry in list_files(uri):
        rel = filesystem(entry.uri)[1][len(prefix):].lstrip("/")
        dst = local_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(read_bytes(entry.uri))
    return local_dir


@contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path holding ``uri`` (the path itself when local; a temp copy for S3)."""
    if not is_s3(uri):
        yield Path(_strip_file_scheme(uri))
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cocoseg-") as tmp:
        if is_dir(uri) or not exists(uri):
            yield download_dir(uri, Path(tmp) / "d")
        else:
            dst = Path(tmp) / posixpath.basename(uri.rstrip("/"))
            dst.write_bytes(read_bytes(uri))
            yield dst


def rmtree_local(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
