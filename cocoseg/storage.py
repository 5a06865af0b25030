"""One storage layer for local paths and ``s3://`` URIs. (Over 400 lines on purpose: local and S3
paths share one set of retry, atomic-commit and manifest rules here; a module per backend would part them.)

Every function takes a *URI*: a local path (absolute or relative, ``file://`` allowed) or
``s3://bucket/key``. S3 access honours the standard AWS environment: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for any S3-compatible store, the usual credential chain, and
``AWS_REGION`` / ``AWS_DEFAULT_REGION``. pyarrow filesystems do the I/O; boto3 is used only where
an S3 API call is needed (bucket creation in tests and tools).

Writes are committed atomically: a local file is written under a temporary name in the same
folder and renamed into place; an S3 object becomes visible only when its single PUT completes.
Multi-file outputs (snapshots, exports, checkpoints) commit by writing a marker file (a manifest)
last: :func:`write_manifest` records each file's size and SHA-256, :func:`check_manifest` refuses a
folder whose marker is missing or whose files do not match it (a write cut short).

S3 calls are retried with exponential backoff on transient faults (HTTP 500/503, SlowDown,
connection resets, timeouts): ``COCOSEG_S3_ATTEMPTS`` attempts in all (default 6), the first wait
``COCOSEG_S3_BACKOFF_S`` seconds (default 0.25), doubling up to 8 s. When they run out, one
:class:`StorageError` line names the object, the attempts and the last fault.

This module imports nothing from cocoseg (layer L0).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.fs as pafs

_T = TypeVar("_T")
log = logging.getLogger(__name__)

__all__ = [
    "FileEntry",
    "IncompleteError",
    "StorageError",
    "check_manifest",
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
    "write_manifest",
    "write_json",
    "write_text",
]


class StorageError(OSError):
    """A storage operation failed; the message names the URI."""


class IncompleteError(StorageError):
    """A multi-file output lacks its commit marker or a file differs from it (a cut-short write)."""


# Faults that a retry can cure. Anything else (access denied, no such bucket, bad request) fails
# at once: retrying it only delays the one line that says what to fix.
_TRANSIENT = ("500", "502", "503", "504", "slow down", "slowdown", "slow_down", "internal_failure", "internalerror",
              "service_unavailable", "serviceunavailable", "throttl", "network_connection", "connection",
              "reset", "timed out", "timeout", "broken pipe", "curlcode", "request_timeout", "unavailable",
              "incomplete", "unexpected eof", "reading response", "partial")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return False
    text = str(exc).lower()
    if any(k in text for k in ("access_denied", "accessdenied", "nosuchbucket", "no such bucket",
                               "invalidaccesskeyid", "signaturedoesnotmatch", "not found", "does not exist")):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError)) or any(k in text for k in _TRANSIENT)


def _attempts() -> int:
    return max(1, int(os.environ.get("COCOSEG_S3_ATTEMPTS", "6")))


def _retry(uri: str, action: str, fn: Any) -> Any:
    """Run ``fn()`` for an S3 ``uri``, retrying transient faults with backoff (see module doc)."""
    attempts, delay = _attempts(), float(os.environ.get("COCOSEG_S3_BACKOFF_S", "0.25"))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (OSError, ConnectionError, TimeoutError) as exc:
            if not _is_transient(exc):
                raise
            if attempt == attempts:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StorageError(f"cannot {action} {uri}: still failing after {attempts} attempts "
                                   f"(last: {first[:300]})") from None
            log.info("%s %s: transient fault (%s); retry %d/%d in %.2f s", action, uri,
                     str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__, attempt,
                     attempts - 1, delay)
            time.sleep(delay * (0.75 + 0.5 * random.random()))  # jitter: retries of many workers spread
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


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
    """A boto3 S3 client configured from the same environment as :func:`filesystem` (botocore's
    standard retry mode, ``COCOSEG_S3_ATTEMPTS`` attempts, for the same transient faults)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": _attempts()})
    return boto3.client("s3", endpoint_url=_endpoint(), region_name=_region(), config=config)


def _wrap(uri: str, action: str, exc: BaseException) -> StorageError:
    return StorageError(f"{action} {uri}: {exc}")


def _info(uri: str) -> pafs.FileInfo:
    fs, path = filesystem(uri)
    if is_s3(uri):
        return _retry(uri, "stat", lambda: fs.get_file_info(path))
    return fs.get_file_info(path)


def exists(uri: str) -> bool:
    try:
        return _info(uri).type != pafs.FileType.NotFound
    except StorageError:
        raise
    except OSError as exc:
        raise _wrap(uri, "cannot stat", exc) from None


def is_dir(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.Directory


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

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    try:
        return _retry(uri, "read", read)
    except StorageError:
        raise
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

    def put() -> None:
        with fs.open_output_stream(path) as f:  # one PUT/multipart upload: visible when complete
            f.write(data)

    try:
        if is_s3(uri):
            _retry(uri, "write", put)  # a failed upload is never visible, so a retry rewrites it whole
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except StorageError:
        raise
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
        infos = _retry(uri, "list", lambda: fs.get_file_info(selector)) if is_s3(uri) else fs.get_file_info(selector)
    except StorageError:
        raise
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
    info = _info(uri)
    call = (lambda fn: _retry(uri, "delete", fn)) if is_s3(uri) else (lambda fn: fn())
    if info.type == pafs.FileType.NotFound:
        if recursive and is_s3(uri):  # S3 "folders" exist only through their keys
            call(lambda: fs.delete_dir_contents(path, missing_dir_ok=True))
        return
    if info.type == pafs.FileType.Directory:
        if not recursive:
            raise StorageError(f"cannot delete {uri}: it is a folder (pass recursive=True)")
        call(lambda: fs.delete_dir(path))
    else:
        call(lambda: fs.delete_file(path))


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


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_manifest(folder: str, marker: str, files: dict[str, bytes], extra: dict[str, Any] | None = None) -> dict:
    """Commit a multi-file output: write ``files`` (name -> bytes) under ``folder``, then the
    marker ``folder/marker`` listing each one's size and SHA-256 (plus ``extra``). An earlier
    marker is removed first, so a write cut short leaves a folder :func:`check_manifest` refuses."""
    delete(join(folder, marker))
    for name, data in files.items():
        write_bytes(join(folder, name), data)
    manifest = {**(extra or {}), "files": {n: {"size": len(d), "sha256": sha256(d)} for n, d in files.items()}}
    write_json(join(folder, marker), manifest)
    return manifest


def check_manifest(folder: str, marker: str, *, hashes: bool = False) -> dict:
    """The marker of a committed folder, after checking that each listed file is there with its
    size (and, with ``hashes``, its SHA-256); :class:`IncompleteError` naming the folder otherwise."""
    try:
        manifest = read_json(join(folder, marker))
    except FileNotFoundError:
        raise IncompleteError(f"{folder} is incomplete: its commit marker {marker} is missing "
                              "(a write was cut short; it is ignored, and removed on resume)") from None
    except ValueError as exc:
        raise IncompleteError(f"{folder}: unreadable commit marker ({exc})") from None
    listed = manifest.get("files")
    if not isinstance(listed, dict):  # a marker of the older format, without the file list
        return manifest
    sizes = {e.uri.rsplit("/", 1)[-1] if is_s3(folder) else os.path.basename(e.uri): e.size
             for e in list_files(folder, recursive=False)}
    for name, meta in listed.items():
        if sizes.get(name) != meta["size"]:
            raise IncompleteError(f"{join(folder, name)} is {'missing' if name not in sizes else 'truncated'} "
                                  f"({sizes.get(name, 0)} of {meta['size']} bytes): {folder} was not written whole")
        if hashes and sha256(read_bytes(join(folder, name))) != meta["sha256"]:
            raise IncompleteError(f"{join(folder, name)} differs from {marker} (SHA-256): {folder} is mixed")
    return manifest


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
