# infleet runtime image for x86/arm64 CPU classes: `infleet build` and `infleet serve` on
# ONNX Runtime. Build from the repository root:
#   docker build -f runtime-images/onnxruntime.Dockerfile -t infleet-runtime-onnxruntime .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src src
COPY devcluster devcluster
COPY scheduler scheduler
COPY operator operator
COPY runtime-images/runtime runtime-images/runtime
RUN pip wheel --no-cache-dir -c constraints.txt --wheel-dir /wheels ".[serve,onnxruntime]"

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
# Pods run with a read-only root filesystem: nothing may be written outside mounted volumes.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 65532:65532
ENTRYPOINT ["infleet"]
