"""The CUDA runtime helpers the TensorRT engine and the TensorRT builder's calibrator share
(server/engines/cuda.py), on a real NVIDIA GPU through cuda-python: a device buffer written and
read back, and a failing call reported as EngineError with CUDA's own words.

CI has no GPU: there these tests are skipped, and they are not CI coverage.
"""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        importlib.util.find_spec("cuda") is None or shutil.which("nvidia-smi") is None,
        reason="needs cuda-python and an NVIDIA GPU (CI has none)",
    ),
]


def test_a_buffer_goes_to_the_device_and_back() -> None:
    from infleet.runtime.server.engines.cuda import check, cudart

    rt = cudart()
    host = np.arange(1024, dtype=np.float32)
    back = np.zeros_like(host)
    pointer = check(rt.cudaMalloc(host.nbytes), "cudaMalloc")
    try:
        h2d, d2h = (
            rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
            rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
        )
        stream = check(rt.cudaStreamCreate(), "cudaStreamCreate")
        check(rt.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, h2d, stream))
        check(rt.cudaMemcpyAsync(back.ctypes.data, pointer, host.nbytes, d2h, stream))
        check(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        check(rt.cudaStreamDestroy(stream))
    finally:
        check(rt.cudaFree(pointer), "cudaFree")
    np.testing.assert_array_equal(back, host)


def test_a_failing_call_says_what_cuda_said() -> None:
    from infleet.runtime.server.engines.cuda import check, cudart
    from infleet.runtime.server.errors import EngineError

    rt = cudart()
    with pytest.raises(EngineError, match=r"cudaMalloc failed: .*out of memory.*CUDA error 2"):
        check(rt.cudaMalloc(1 << 60), "cudaMalloc")  # an exabyte: refused, nothing allocated
