# infleet runtime image for NVIDIA classes: `infleet build` and `infleet serve` on TensorRT,
# with ONNX Runtime's CUDA provider as the measured alternative and the FP32 reference.
# TensorRT comes from NVIDIA's base image (pinned by its release tag), not from PyPI, so the
# `tensorrt` extra is not installed; the build checks it imports. Build from the repository root:
#   docker build -f runtime-images/tensorrt.Dockerfile -t infleet-runtime-tensorrt .
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3
FROM ${TENSORRT_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src src
COPY devcluster devcluster
COPY scheduler scheduler
COPY operator operator
COPY runtime-images/runtime runtime-images/runtime
# constraints.txt pins the CPU onnxruntime; the GPU build replaces it here.
RUN grep -v '^onnxruntime==' constraints.txt > /tmp/constraints-gpu.txt \
 && pip wheel --no-cache-dir -c /tmp/constraints-gpu.txt --wheel-dir /wheels ".[serve,gpu]"

FROM ${TENSORRT_IMAGE}
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels \
 && python -c "import tensorrt; print('tensorrt', tensorrt.__version__)"
# Pods run with a read-only root filesystem: nothing may be written outside mounted volumes.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 65532:65532
ENTRYPOINT ["infleet"]
