#!/usr/bin/env bash
# ONNX Runtime's CUDA path end to end on a GPU machine without network (a lent H100 here).
#
# Here (network): the payload is onnxruntime-gpu's wheel, the zoo's two ONNX models and the
# wheels the machine lacks, as one tar cut into pieces small enough to travel one per call:
#     hack/device/ort-gpu.sh pack            -> .device/p1 ... .device/pN (+ SHA256SUMS)
# There: each call but the last copies its piece into /tmp/stage (`cp .device/pK/* /tmp/stage/`);
# the last one runs
#     hack/device/ort-gpu.sh run [OUTDIR]    -> joins, verifies sha256, installs under /tmp,
#                                                runs bench/gpu_onnxruntime.py (GPU_BENCH=0
#                                                skips it), bench_serve on the GPU (SERVE_BENCH=0
#                                                skips it) and, with CPU_BENCH=1, bench_serve on
#                                                2 pinned cores with the machine's CPU ORT
# CI has no GPU and never runs this.
set -euo pipefail
cd "$(dirname "$0")/../.."
PIECE=${PIECE:-60M}

pack() {
    local py=.venv/bin/python
    rm -rf .device/payload .device/p[0-9]*
    mkdir -p .device/payload/models .device/payload/whl
    [ -f .device/ortwheel/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl ] ||
        $py -m pip download -q onnxruntime-gpu==1.31.1 --python-version 3.12 \
            --platform manylinux_2_28_x86_64 --only-binary=:all: --no-deps -d .device/ortwheel
    cp .device/ortwheel/*.whl .device/payload/whl/
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .device/payload/whl \
        pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
        uvloop==0.23.0 httptools==0.9.0 orjson==3.13.0 typing_extensions==4.16.0 \
        prometheus_client==0.26.0
    $py -c "
from pathlib import Path
from infleet.runtime.zoo import efficientnet_lite0, minilm_l6
efficientnet_lite0(Path('.device/payload/models/efficientnet-lite0.onnx'))
minilm_l6(Path('.device/payload/models/minilm-l6.onnx'))"
    (cd .device/payload && sha256sum whl/* models/*) > .device/payload.sha256
    tar -C .device/payload -cf .device/payload.tar .
    mkdir -p .device/split && rm -f .device/split/*
    split -b "$PIECE" -d .device/payload.tar .device/split/piece.
    local n=0
    for f in .device/split/piece.*; do
        n=$((n + 1)); mkdir -p ".device/p$n"; mv "$f" ".device/p$n/"
    done
    cp .device/payload.sha256 ".device/p$n/SHA256SUMS.files"
    (cd .device && sha256sum payload.tar) > ".device/p$n/SHA256SUMS.tar"
    rm -rf .device/split .device/payload .device/payload.tar
    du -sh .device/p*
}

run() {
    local out=${1:-/tmp/infleet-gpu-out}
    mkdir -p "$out" /tmp/stage
    cp .device/p*/* /tmp/stage/ 2>/dev/null || true
    cat /tmp/stage/piece.* > /tmp/payload.tar
    (cd /tmp && sed 's#payload.tar#/tmp/payload.tar#' stage/SHA256SUMS.tar | sha256sum -c -)
    rm -rf /tmp/payload && mkdir -p /tmp/payload && tar -C /tmp/payload -xf /tmp/payload.tar
    (cd /tmp/payload && sha256sum -c ../stage/SHA256SUMS.files)
    local pip=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir)
    "${pip[@]}" --target /tmp/ortgpu /tmp/payload/whl/onnxruntime_gpu-*.whl
    "${pip[@]}" --target /tmp/site $(ls /tmp/payload/whl/*.whl | grep -v onnxruntime_gpu)
    rm -rf build
    if ! python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/infleet .; then
        echo "pip install of infleet failed; mapping the packages by symlinks" >&2
        rm -rf /tmp/infleet && mkdir -p /tmp/infleet && cp -r core /tmp/infleet/infleet
        ln -s "$PWD/crds" /tmp/infleet/infleet/api
        ln -s "$PWD/operator" /tmp/infleet/infleet/operator
        ln -s "$PWD/scheduler" /tmp/infleet/infleet/scheduler
        ln -s "$PWD/runtime-images/runtime" /tmp/infleet/infleet/runtime
    fi
    export PYTHONPATH=/tmp/ortgpu:/tmp/site:/tmp/infleet PATH=/tmp/infleet/bin:$PATH
    export PYTHONUNBUFFERED=1
    set -o pipefail
    if [ "${GPU_BENCH:-1}" = 1 ]; then
        python3 bench/gpu_onnxruntime.py --models /tmp/payload/models --json "$out/gpu.json" \
            2>&1 | tee "$out/gpu.log" || echo "gpu_onnxruntime.py failed: $?"
    fi
    if [ "${SERVE_BENCH:-1}" = 1 ]; then  # the sample CNN served from the GPU
        timeout 240 python3 bench/bench_serve.py --model small --skip kserve --seconds 3 \
            --serve-args "" --serve-args "--workers 2" --json "$out/serve-gpu.json" 2>&1 |
            tee "$out/serve-gpu.log" || true
    fi
    if [ "${CPU_BENCH:-0}" = 1 ]; then  # CPU only (the machine's own onnxruntime), pinned
        for model in medium small; do
            PYTHONPATH=/tmp/site:/tmp/infleet timeout 280 python3 bench/bench_serve.py \
                --model "$model" --skip kserve --seconds 3 --server-cpus 0-1 --client-cpus 2-3 \
                --threads 2 --serve-args "" --serve-args "--workers 2 --threads 1" \
                --json "$out/serve-cpu-$model.json" \
                2>&1 | tee "$out/serve-cpu-$model.log" || true
        done
    fi
}

"$@"
