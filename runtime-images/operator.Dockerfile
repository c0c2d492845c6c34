# infleet operator image: `infleet run` (kopf), what the Helm chart's StatefulSet runs. No
# backend here: the operator never builds or serves an engine (the runtime images do).
# Build from the repository root:
#   docker build -f runtime-images/operator.Dockerfile -t ghcr.io/infleet/operator:0.1.0 .
# Bases are pinned by tag to a patch release; pin by digest (@sha256:...) when publishing.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src src
COPY devcluster devcluster
COPY scheduler scheduler
COPY operator operator
COPY runtime-images/runtime runtime-images/runtime
# constraints.txt pins every dependency to the set CI tests.
RUN pip wheel --no-cache-dir -c constraints.txt --wheel-dir /wheels "."

FROM python:3.11.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
# The pod runs with a read-only root filesystem; /tmp is an emptyDir.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["infleet"]
CMD ["run", "--all-namespaces"]
