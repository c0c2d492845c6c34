"""KServe v2 tensor datatypes and their numpy equivalents.

Wire data is little-endian (the protocol says so); the explicit ``<`` byte order makes the
binary decoding correct on any host. BYTES tensors are numpy object arrays of ``bytes``:
their elements have variable length, so no fixed-width numpy dtype can hold them losslessly.
"""

from __future__ import annotations

from typing import get_args

import numpy as np

from infleet.runtime.manifest import Datatype

DATATYPES: frozenset[str] = frozenset(get_args(Datatype))

NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

_BY_NUMPY: dict[np.dtype, str] = {
    dt.newbyteorder("="): name for name, dt in NUMPY_DTYPES.items() if name != "BYTES"
}


def numpy_dtype(datatype: str) -> np.dtype:
    return NUMPY_DTYPES[datatype]


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype of an engine output array (str/bytes/object arrays are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_NUMPY[array.dtype.newbyteorder("=")]
    except KeyError:
        raise TypeError(f"numpy dtype {array.dtype} has no v2 datatype") from None


def is_integer(datatype: str) -> bool:
    return datatype.startswith(("INT", "UINT"))


def is_float(datatype: str) -> bool:
    return datatype.startswith("FP")
