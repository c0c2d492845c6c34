"""Readers for weight files without PyTorch: legacy ``torch.save`` pickles and safetensors.

The legacy format (before PyTorch 1.6) is: magic, protocol and sys-info pickles, a pickle of
the object whose tensors refer to storages by persistent id, a pickle of storage keys, then
each storage as an int64 element count followed by raw little-endian data.
"""

from __future__ import annotations

import collections
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Storage:
    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype
        self.data: np.ndarray | None = None


class _TensorRef:
    def __init__(
        self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        assert self.storage.data is not None
        item = self.storage.dtype.itemsize
        base = self.storage.data[self.offset :]
        view = np.lib.stride_tricks.as_strided(
            base, shape=self.size, strides=[s * item for s in self.stride]
        )
        return np.array(view)


def load_legacy_torch(path: Path) -> dict[str, np.ndarray]:
    """A state dict saved by ``torch.save`` in the legacy (non-zip) format, as numpy arrays."""
    storages: dict[str, _Storage] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return lambda st, off, size, stride, *_: _TensorRef(
                    st, off, tuple(size), tuple(stride)
                )
            if module == "torch" and name in _STORAGE_DTYPES:
                return np.dtype(_STORAGE_DTYPES[name])
            if module == "collections" and name == "OrderedDict":
                return collections.OrderedDict
            # Anything else would execute code from the file: refuse it.
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

        def persistent_load(self, pid: Any) -> _Storage:
            _kind, dtype, key, _location, _size, _view = pid
            return storages.setdefault(key, _Storage(dtype))

    with path.open("rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:  # noqa: S301 - plain ints, checked before use
            raise ValueError(f"{path}: not a legacy torch.save file")
        pickle.load(f)  # noqa: S301 - protocol version (int)
        pickle.load(f)  # noqa: S301 - sys info (dict of ints and bools)
        state = Unpickler(f).load()
        keys = Unpickler(f).load()
        for key in keys:
            st = storages[key]
            (count,) = struct.unpack("<q", f.read(8))
            st.data = np.frombuffer(f.read(count * st.dtype.itemsize), dtype=st.dtype)
    return {k: v.array() for k, v in state.items() if isinstance(v, _TensorRef)}


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    dtypes = {
        "F32": np.float32,
        "F16": np.float16,
        "F64": np.float64,
        "I64": np.int64,
        "I32": np.int32,
    }
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        out[name] = (
            np.frombuffer(data[start:end], dtype=dtypes[meta["dtype"]])
            .reshape(meta["shape"])
            .copy()
        )
    return out
