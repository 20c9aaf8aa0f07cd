"""Tests for core.models.legacy_pth: reading PyTorch's legacy torch.save format without torch, and refusing
every file that is not a plain state dict before any of its code can run."""

from __future__ import annotations

import collections
import io
import logging
import os
import pathlib
import pickle
import re
from typing import Any

import numpy as np
import pytest

from core.errors import WeightsError
from core.models import lite0
from core.models.legacy_pth import read_legacy_pth

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TOTAL_PARAMS = 4_694_024


# ------------------------------------------------------------------------------------------
# helpers: tiny legacy files written by hand, the way torch.save writes them
# ------------------------------------------------------------------------------------------


def _header() -> bytes:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    return pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2) + pickle.dumps(sys_info, protocol=2)


def _legacy_bytes(state_pickle: bytes) -> bytes:
    """A legacy torch.save file whose state dict pickle is ``state_pickle`` and has no storages."""
    return _header() + state_pickle + pickle.dumps([], protocol=2)


class FloatStorage:
    """Pickled by reference, then renamed to ``torch.FloatStorage`` in the bytes."""


class LongStorage:
    """Pickled by reference, then renamed to ``torch.LongStorage`` in the bytes."""


def _rebuild_tensor_v2(*args: Any) -> None:
    """Pickled by reference, then renamed to ``torch._utils._rebuild_tensor_v2`` in the bytes."""


class _Tensor:
    """Pickles the way a torch tensor does: ``_rebuild_tensor_v2(storage, offset, size, stride, ...)``."""

    def __init__(self, storage: tuple, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple[Any, tuple]:
        return (_rebuild_tensor_v2, self.args)


class _StoragePickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return obj if isinstance(obj, tuple) and obj[:1] == ("storage",) else None


def _tiny_file(storages: dict[str, tuple[type, np.ndarray]], tensors: dict[str, _Tensor], trailing: bytes = b"") -> bytes:
    """A complete legacy file: header, state dict, storage keys, then each storage's count and data."""
    buffer = io.BytesIO()
    _StoragePickler(buffer, protocol=2).dump(collections.OrderedDict(tensors))
    state = buffer.getvalue()
    for name, torch_name in (
        ("FloatStorage", b"torch\nFloatStorage"),
        ("LongStorage", b"torch\nLongStorage"),
        ("_rebuild_tensor_v2", b"torch._utils\n_rebuild_tensor_v2"),
    ):
        state = state.replace(f"{__name__}\n{name}".encode(), torch_name)
    out = _header() + state + pickle.dumps(list(storages), protocol=2)
    for _storage_type, values in storages.values():
        out += len(values).to_bytes(8, "little") + values.astype(values.dtype.newbyteorder("<")).tobytes()
    return out + trailing


def _storage(key: str, storage_type: type, numel: int) -> tuple:
    return ("storage", storage_type, key, "cpu", numel)


class _RunsCommand:
    """Pickles to a call of os.system, as a malicious checkpoint would."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------


def test_tiny_file_rebuilds_strided_tensors(tmp_path: pathlib.Path) -> None:
    floats = np.arange(12, dtype=np.float32)
    a = _storage("0", FloatStorage, 12)
    tensors = {
        "w": _Tensor(a, 2, (2, 3), (1, 2)),  # a strided view: columns step by 2, rows by 1
        "b": _Tensor(a, 9, (3,), (1,)),  # shares the storage
        "n": _Tensor(_storage("1", LongStorage, 1), 0, (), ()),
    }
    path = tmp_path / "tiny.pth"
    path.write_bytes(_tiny_file({"0": (FloatStorage, floats), "1": (LongStorage, np.array([7]))}, tensors))
    state = read_legacy_pth(path)
    assert list(state) == ["w", "b", "n"]
    np.testing.assert_array_equal(state["w"], [[2, 4, 6], [3, 5, 7]])
    np.testing.assert_array_equal(state["b"], [9, 10, 11])
    assert state["w"].dtype == np.float32 and state["n"].dtype == np.int64 and state["n"] == 7
    for value in state.values():
        assert value.flags["C_CONTIGUOUS"] and value.flags["OWNDATA"]


def test_trailing_bytes_are_logged_not_refused(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    a = _storage("0", FloatStorage, 2)
    path = tmp_path / "trailing.pth"
    path.write_bytes(_tiny_file({"0": (FloatStorage, np.ones(2, np.float32))}, {"x": _Tensor(a, 0, (2,), (1,))}, b"xx"))
    with caplog.at_level(logging.WARNING, logger="core.models.legacy_pth"):
        assert read_legacy_pth(path)["x"].tolist() == [1.0, 1.0]
    assert "2 unexpected bytes" in caplog.text


def test_read_real_file() -> None:
    state = read_legacy_pth(lite0.pth_path())
    assert len(state) == 296
    params = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert params == TOTAL_PARAMS
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.bias"].shape == (1000,)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert "_blocks.0._expand_conv.weight" not in state
    for value in state.values():
        assert value.flags["C_CONTIGUOUS"] and value.flags["OWNDATA"]
    assert all(np.isfinite(v).all() for v in state.values())
    assert (state["_bn1.running_var"] > 0).all()


# ------------------------------------------------------------------------------------------
# refusing
# ------------------------------------------------------------------------------------------


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(_legacy_bytes(pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=2)))
    with pytest.raises(WeightsError, match=r"system"):
        read_legacy_pth(evil)
    assert not marker.exists()


def test_global_in_header_pickle_is_refused(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_header.pth"
    evil.write_bytes(pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=2) + b"rest")
    with pytest.raises(WeightsError, match=r"system"):
        read_legacy_pth(evil)
    assert not marker.exists()


def test_other_globals_are_refused_by_name(tmp_path: pathlib.Path) -> None:
    # An allowed-looking module with a name that is not on the list.
    path = tmp_path / "other.pth"
    path.write_bytes(_legacy_bytes(b"\x80\x02ctorch._utils\n_rebuild_parameter\nq\x00."))
    with pytest.raises(WeightsError, match=r"torch\._utils\._rebuild_parameter"):
        read_legacy_pth(path)


def test_truncated_file_is_refused(tmp_path: pathlib.Path) -> None:
    raw = lite0.pth_path().read_bytes()
    for cut in (len(raw) - 1000, 30_000, 100):
        path = tmp_path / f"cut_{cut}.pth"
        path.write_bytes(raw[:cut])
        with pytest.raises(WeightsError):
            read_legacy_pth(path)


def test_text_and_zip_files_are_refused(tmp_path: pathlib.Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(WeightsError):
        read_legacy_pth(text)
    zipped = tmp_path / "new_format.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(WeightsError, match="zip"):
        read_legacy_pth(zipped)
    with pytest.raises(WeightsError):
        read_legacy_pth(tmp_path / "missing.pth")


def test_tensor_reaching_past_its_storage_is_refused(tmp_path: pathlib.Path) -> None:
    raw = lite0.pth_path().read_bytes()
    # The stem kernel's size tuple (32, 3, 3, 3): make it (33, 3, 3, 3), one row past its storage.
    size_tuple = b"(K K\x03K\x03K\x03t"
    assert raw.count(size_tuple) == 1
    path = tmp_path / "overreach.pth"
    path.write_bytes(raw.replace(size_tuple, b"(K!K\x03K\x03K\x03t"))
    with pytest.raises(WeightsError, match="past the end"):
        read_legacy_pth(path)


def test_tiny_tensor_past_its_storage_is_refused(tmp_path: pathlib.Path) -> None:
    a = _storage("0", FloatStorage, 4)
    path = tmp_path / "overreach_tiny.pth"
    path.write_bytes(_tiny_file({"0": (FloatStorage, np.ones(4, np.float32))}, {"x": _Tensor(a, 1, (2, 2), (2, 1))}))
    with pytest.raises(WeightsError, match=r"tensor x reaches past the end of storage 0"):
        read_legacy_pth(path)


def test_refusal_says_what_to_reinstall(tmp_path: pathlib.Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(WeightsError) as generic:
        read_legacy_pth(text)
    assert str(generic.value).endswith("was expected; reinstall the package that shipped it.")
    with pytest.raises(WeightsError) as named:
        read_legacy_pth(text, pip_spec="some-weights==1.0")
    assert str(named.value).endswith("; reinstall it with pip install --force-reinstall some-weights==1.0.")
    with pytest.raises(WeightsError, match=re.escape("pip install --force-reinstall some-weights==1.0.")):
        read_legacy_pth(tmp_path / "missing.pth", pip_spec="some-weights==1.0")
    assert len(str(named.value).splitlines()) == 1
