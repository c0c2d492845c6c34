# infleet runtime image for ARM classes: `infleet build` and `infleet serve` on
# Apache TVM (ONNX Runtime is the FP32 reference of the accuracy gate). Build from the repository root:
#   docker build -f runtime-images/tvm.Dockerfile -t infleet-runtime-tvm .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src src
COPY devcluster devcluster
COPY scheduler scheduler
COPY operator operator
COPY runtime-images/runtime runtime-images/runtime
RUN pip wheel --no-cache-dir -c constraints.txt --wheel-dir /wheels ".[serve,onnxruntime,tvm]"

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
# Pods run with a read-only root filesystem: nothing may be written outside mounted volumes.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 65532:65532
ENTRYPOINT ["infleet"]
