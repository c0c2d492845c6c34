# infleet runtime image for NVIDIA classes: `infleet build` and `infleet serve` on TensorRT,
# with ONNX Runtime's CUDA provider as the measured alternative and the FP32 reference.
# TensorRT comes from NVIDIA's base image, not from PyPI. Build from the repository root:
#   docker build -f runtime-images/tensorrt.Dockerfile -t infleet-runtime-tensorrt .
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3
FROM ${TENSORRT_IMAGE}
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src src
COPY devcluster devcluster
COPY scheduler scheduler
COPY operator operator
COPY runtime-images/runtime runtime-images/runtime
# constraints.txt pins the CPU onnxruntime; the GPU build replaces it here.
RUN grep -v '^onnxruntime==' constraints.txt > /tmp/constraints-gpu.txt \
 && pip install --no-cache-dir -c /tmp/constraints-gpu.txt ".[serve,gpu]" \
 && python -c "import tensorrt; print('tensorrt', tensorrt.__version__)" \
 && rm -rf /src
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 65532:65532
ENTRYPOINT ["infleet"]
