"""Read a PyTorch ``.pt`` file (zip format) without executing any code from it.

A pickle is a small program: each GLOBAL opcode names a callable which the loader imports and
may then call. :class:`RestrictedUnpickler` answers every GLOBAL itself and admits only

- tensor and storage reconstruction (re-implemented here: flat storage bytes -> as_strided),
- plain containers (``dict``, ``OrderedDict``, ``list``, ``set``, ...), ``torch.Size``,
  dtypes and devices,
- classes of allow-listed foreign namespaces (the reference implementation's modules, PyTorch
  ``nn`` modules), replaced by *inert stand-ins*: objects that only store the state the pickle
  gives them and have no behaviour.

Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is refused with a
:class:`UnsafePickleError` before it can be called, so nothing from the file ever runs and
the reference implementation is never imported.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import zipfile
from typing import Any

import torch

from cocoseg.utils import UserError

__all__ = ["ForeignObject", "UnsafePickleError", "load_pt"]

# Namespaces whose classes become inert stand-ins (never imported).
FOREIGN_PREFIXES = ("ultralytics.", "torch.nn.modules.")

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}
_DTYPES = {str(d).removeprefix("torch."): d for d in _STORAGE_DTYPES.values()}
_CONTAINERS = {
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "dict"): dict,
    ("builtins", "list"): list, ("builtins", "tuple"): tuple, ("builtins", "slice"): slice,
    ("collections", "OrderedDict"): collections.OrderedDict, ("torch", "Size"): torch.Size,
}


class UnsafePickleError(UserError):
    """The file asks the unpickler for something outside the allow-list."""


class ForeignObject:
    """Inert stand-in for an instance of a class from a foreign namespace.

    Holds the constructor arguments and the pickled state (for an ``nn.Module`` that is its
    ``__dict__``: ``_parameters``, ``_buffers``, ``_modules``, plain attributes) and nothing
    else. Subclasses are created per foreign class name; ``foreign_name`` tells which.
    """

    foreign_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> ForeignObject:
        obj = object.__new__(cls)
        obj.__dict__["_foreign_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        # (dict_state, slot_state) is what objects with __slots__ pickle as.
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], (dict, type(None))):
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            for key, value in state.items():
                self.__dict__[str(key)] = value
        else:
            self.__dict__["_foreign_state"] = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.foreign_name}>"


_STAND_INS: dict[str, type[ForeignObject]] = {}


def _stand_in(full_name: str) -> type[ForeignObject]:
    if full_name not in _STAND_INS:
        _STAND_INS[full_name] = type(full_name.rsplit(".", 1)[-1], (ForeignObject,), {"foreign_name": full_name})
    return _STAND_INS[full_name]


class _StorageType:
    """What a ``torch.<X>Storage`` global resolves to: only its dtype is used."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    requires_grad: bool = False, backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """Tensor view into a flat storage (a 1-D tensor here), copied into its own memory."""
    if not isinstance(storage, torch.Tensor):
        raise UnsafePickleError("tensor rebuild without a storage")
    return storage.as_strided(tuple(size), tuple(stride), int(offset)).clone()


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool = True, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    return data  # parameters come back as plain tensors: only the values matter for import


_TORCH_REBUILDERS = {
    "_rebuild_tensor_v2": _rebuild_tensor,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler over a torch zip archive that resolves only allow-listed globals."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, name: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name Python 2 modules (``__builtin__.set``); map them as pickle does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _CONTAINERS:
            return _CONTAINERS[(module, name)]
        if module == "torch._utils" and name in _TORCH_REBUILDERS:
            return _TORCH_REBUILDERS[name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if module == "torch" and name == "device":
            return torch.device
        if module.startswith(FOREIGN_PREFIXES) and name[:1].isupper():  # classes, by convention
            return _stand_in(f"{module}.{name}")
        raise UnsafePickleError(
            f"{self._name}: refused to load: the pickle asks for {module}.{name}, which is not a tensor, "
            "a storage, a plain container or a known model class. The file may be malicious; it was not "
            "executed.")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        """('storage', storage_type, key, location, numel) -> flat 1-D tensor of that dtype."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"{self._name}: unexpected persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"{self._name}: storage of unknown type {storage_type!r:.80}")
        try:
            raw = self._archive.read(f"{self._prefix}data/{key}")
        except KeyError:
            raise UnsafePickleError(f"{self._name}: storage {key!r} is missing from the archive") from None
        flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(storage_type.dtype) if raw else \
            torch.empty(0, dtype=storage_type.dtype)
        if storage_type.dtype != torch.uint8 and flat.numel() != int(numel):
            raise UnsafePickleError(f"{self._name}: storage {key!r} holds {flat.numel()} values, expected {numel}")
        return flat


class NotATorchArchiveError(UserError):
    """The file is not a PyTorch zip archive (or is truncated)."""


def load_pt(data: bytes, name: str) -> Any:
    """Unpickle the object in a torch zip archive (``torch.save`` format) without running code.

    ``name`` is used in error messages only. Raises :class:`NotATorchArchiveError` for files
    that are not (complete) torch archives and :class:`UnsafePickleError` for pickles that ask
    for anything outside the allow-list.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    except zipfile.BadZipFile:
        raise NotATorchArchiveError(
            f"{name}: not a PyTorch checkpoint archive (not a zip file, or truncated); "
            "only files written by torch.save (zip format, torch >= 1.6) can be imported") from None
    if len(pickles) != 1:
        raise NotATorchArchiveError(f"{name}: zip archive without exactly one data.pkl: not a torch checkpoint")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = archive.read(f"{prefix}byteorder").decode() if f"{prefix}byteorder" in archive.namelist() else "little"
    if byteorder != "little":
        raise NotATorchArchiveError(f"{name}: big-endian checkpoints are not supported")
    try:
        payload = archive.read(pickles[0])
        return RestrictedUnpickler(payload, archive, prefix, name).load()
    except UserError:
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError,
            AttributeError, IndexError, RuntimeError) as exc:
        raise NotATorchArchiveError(f"{name}: corrupt checkpoint ({type(exc).__name__}: {exc})") from None
