#!/usr/bin/env bash
# Every GPU run of the project, from a clean checkout, on a GPU machine without network (the
# lent H200 here: 64 MiB may travel per call, the machine stays warm ~30 s between calls).
#
# Here (network):
#     hack/device/gpu.sh pack rtx  -> .device/rtx/p1..p2, each < 60 MiB (see pack below)
#     hack/device/gpu.sh pack ort  -> .device/ort/p1..p6
# There, one call per piece, back to back while the machine stays warm (carry .device/NAME/pK):
#     mkdir -p /tmp/stage && cp .device/NAME/pK/* /tmp/stage/
# and then, in the same warm machine (carry the code with it):
#     hack/device/gpu.sh run OUT   -> stage, join, sha256 -c (tar and every file in it),
#                                     pip install --target under /tmp, then the steps below
# Steps (STEPS=tests,rtx,ort,serve by default; each one's output lands in OUT):
#   tests  pytest -m gpu tests/gpu                     (pytest-gpu.log)
#   rtx    bench/gpu_tensorrt_rtx.py: TensorRT-RTX facts (rtx.json, rtx.log)
#   ort    bench/gpu_onnxruntime.py: infleet build/serve on ORT CUDA, the profiles (gpu.json, gpu.log;
#          MAX_BATCH, default 16: the engine pads batches to it; PROFILE_SECONDS, default 0.3;
#          ORT_ONLY=build: the builds and their profiles alone)
#   serve  bench/bench_serve.py on the GPU: in-process layouts vs infleet serve --workers N
#          (serve-MODE.json/.log), once per BINDING_MODES (off iobinding graph: the ORT engine's
#          INFLEET_ORT_CUDA_BINDING); SERVE_ARGS overrides the configurations (';'-separated);
#          CLIENT_PROCS load-generator processes (4 by default)
#   cpu    (not by default) bench_serve on 2 pinned cores with the machine's CPU onnxruntime
# CI has no GPU and never runs this.
set -euo pipefail
cd "$(dirname "$0")/../.."
PIECE=${PIECE:-58M}
ORT_WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
RTX_LIBS=tensorrt_rtx_cu13_libs-1.7.1.116-py3-none-manylinux_2_28_x86_64.whl
RTX_BINDINGS=tensorrt_rtx_cu13_bindings-1.7.1.116-cp312-none-manylinux_2_28_x86_64.whl
PIP_DOWNLOAD=(-m pip download -q --no-deps --only-binary=:all: --python-version 3.12
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# Two payloads, so that each is useful alone and a machine that goes cold between calls costs
# only the payload in flight: rtx (TensorRT-RTX, the pure-Python wheels, EfficientNet-Lite0:
# 2 pieces), ort (onnxruntime-gpu, the same wheels and model: 5 pieces) and minilm (the zoo's
# MiniLM, 2 pieces, optional). pack NAME -> .device/NAME/p1..pN.
pack() {
    local name=${1:-rtx} py=.venv/bin/python dir
    dir=.device/$name
    rm -rf .device/payload "$dir"
    mkdir -p .device/payload/models .device/payload/whl .device/ortwheel .device/rtx-whl "$dir"
    if [ "$name" = rtx ]; then
        [ -f ".device/rtx-whl/$RTX_LIBS" ] && [ -f ".device/rtx-whl/$RTX_BINDINGS" ] ||
            $py "${PIP_DOWNLOAD[@]}" -d .device/rtx-whl tensorrt-rtx-cu13-libs==1.7.1.116 \
                tensorrt-rtx-cu13-bindings==1.7.1.116
        cp ".device/rtx-whl/$RTX_LIBS" ".device/rtx-whl/$RTX_BINDINGS" .device/payload/whl/
        $py "${PIP_DOWNLOAD[@]}" -d .device/payload/whl \
            pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 \
            typing-inspection==0.4.5 httptools==0.9.0 orjson==3.13.0 typing_extensions==4.16.0
        $py -c "
from pathlib import Path
from infleet.runtime.zoo import efficientnet_lite0
efficientnet_lite0(Path('.device/payload/models/efficientnet-lite0.onnx'))"
    else
        [ -f ".device/ortwheel/$ORT_WHEEL" ] ||
            $py "${PIP_DOWNLOAD[@]}" -d .device/ortwheel onnxruntime-gpu==1.31.1
        cp ".device/ortwheel/$ORT_WHEEL" .device/payload/whl/
    fi
    if [ "$name" != rtx ]; then  # each payload runs alone: the server's wheels, EfficientNet
        $py "${PIP_DOWNLOAD[@]}" -d .device/payload/whl \
            pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 \
            typing-inspection==0.4.5 httptools==0.9.0 orjson==3.13.0 typing_extensions==4.16.0
        $py -c "
from pathlib import Path
from infleet.runtime.zoo import efficientnet_lite0
efficientnet_lite0(Path('.device/payload/models/efficientnet-lite0.onnx'))"
    fi
    if [ "$name" = minilm ]; then  # the zoo's second model (90 MB: 2 pieces), optional
        rm -f .device/payload/whl/* .device/payload/models/*
        $py -c "
from pathlib import Path
from infleet.runtime.zoo import minilm_l6
minilm_l6(Path('.device/payload/models/minilm-l6.onnx'))"
    fi
    (cd .device/payload && find whl models -type f | sort | xargs sha256sum) > "$dir/files.sha256"
    tar -C .device/payload -cf "$dir/payload.tar" .
    split -b "$PIECE" -d "$dir/payload.tar" "$dir/$name.piece."
    local n=0 f
    for f in "$dir/$name.piece."*; do
        n=$((n + 1)); mkdir -p "$dir/p$n"; mv "$f" "$dir/p$n/"
    done
    mv "$dir/files.sha256" "$dir/p$n/$name.files.sha256"
    (cd "$dir" && sha256sum payload.tar | sed "s/payload.tar/$name.tar/") > "$dir/p$n/$name.tar.sha256"
    rm -rf .device/payload "$dir/payload.tar"
    du -sh "$dir"/p*
}

# There: cp .device/NAME/pK/* /tmp/stage/ in each call (carry .device/NAME/pK).
stage() {
    mkdir -p /tmp/stage
    cp .device/*/p*/* /tmp/stage/ 2>/dev/null || true
    ls /tmp/stage
}

unpack() {  # NAME: join, check, unpack into /tmp/payload, once
    local name=$1
    [ -f "/tmp/$name.ok" ] && return 0
    [ -f "/tmp/stage/$name.tar.sha256" ] || { echo "payload $name not staged"; return 1; }
    cat /tmp/stage/"$name".piece.* > "/tmp/$name.tar"
    (cd /tmp && sha256sum -c "stage/$name.tar.sha256")
    mkdir -p /tmp/payload && tar -C /tmp/payload -xf "/tmp/$name.tar"
    (cd /tmp/payload && sha256sum -c --quiet "../stage/$name.files.sha256") && echo "$name files: OK"
    rm -f "/tmp/$name.tar" /tmp/stage/"$name".piece.*
    touch "/tmp/$name.ok"
}

install() {
    local pip=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir)
    local name
    for name in rtx ort minilm; do unpack "$name" || true; done
    [ -f "/tmp/payload/whl/$RTX_LIBS" ] && [ ! -d /tmp/trtrtx ] &&
        "${pip[@]}" --target /tmp/trtrtx "/tmp/payload/whl/$RTX_LIBS" "/tmp/payload/whl/$RTX_BINDINGS"
    [ -f "/tmp/payload/whl/$ORT_WHEEL" ] && [ ! -d /tmp/ortgpu ] &&
        "${pip[@]}" --target /tmp/ortgpu "/tmp/payload/whl/$ORT_WHEEL"
    if [ ! -d /tmp/infleet ]; then
        "${pip[@]}" --target /tmp/site $(ls /tmp/payload/whl/*.whl | grep -v -e onnxruntime_gpu -e tensorrt_rtx)
        rm -rf build
        python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/infleet .
    fi
    return 0
}

run() {
    local out=${1:-/tmp/infleet-gpu-out}
    mkdir -p "$out"
    stage >/dev/null
    install || true
    export PYTHONPATH=/tmp/ortgpu:/tmp/trtrtx:/tmp/site:/tmp/infleet PATH=/tmp/infleet/bin:$PATH
    export PYTHONUNBUFFERED=1
    local steps=",${STEPS:-tests,rtx,ort,serve},"
    set -o pipefail
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader
    python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
    python3 -c "import tensorrt_rtx_bindings as t; print('tensorrt-rtx', t.__version__)" || true
    if [[ $steps == *,tests,* ]]; then
        timeout 300 python3 -m pytest -m gpu tests/gpu -p no:cacheprovider -ra 2>&1 |
            tee "$out/pytest-gpu.log" || echo "pytest -m gpu failed: $?"
    fi
    if [[ $steps == *,rtx,* ]]; then
        timeout 200 python3 bench/gpu_tensorrt_rtx.py --models /tmp/payload/models \
            --json "$out/rtx.json" 2>&1 | tee "$out/rtx.log" || echo "gpu_tensorrt_rtx.py failed: $?"
    fi
    if [[ $steps == *,ort,* ]]; then
        timeout 300 python3 bench/gpu_onnxruntime.py --models /tmp/payload/models \
            --class nvidia-h200 --compute-capability 9.0 --max-batch "${MAX_BATCH:-16}" \
            --batch 32 --profile-seconds "${PROFILE_SECONDS:-0.3}" --seconds 1 \
            ${ORT_ONLY:+--only "$ORT_ONLY"} \
            --json "$out/gpu.json" 2>&1 |
            tee "$out/gpu.log" || echo "gpu_onnxruntime.py failed: $?"
    fi
    if [[ $steps == *,serve,* ]]; then  # the sample CNN served from the GPU
        local configs=() c
        IFS=';' read -r -a configs <<< "${SERVE_ARGS:---workers 2;--workers 4;--workers 8}"
        local serve_args=()
        for c in "${configs[@]}"; do serve_args+=(--serve-args "$c"); done
        local m
        for m in ${BINDING_MODES:-off}; do  # INFLEET_ORT_CUDA_BINDING: off, iobinding, graph
            INFLEET_ORT_CUDA_BINDING=$m timeout 280 python3 bench/bench_serve.py --model small \
                --skip kserve --seconds "${SERVE_SECONDS:-3}" --levels "${SERVE_LEVELS:-1,16,64}" \
                --client-procs "${CLIENT_PROCS:-4}" \
                "${serve_args[@]}" --json "$out/serve-$m.json" 2>&1 |
                tee "$out/serve-$m.log" || echo "bench_serve ($m) failed: $?"
        done
    fi
    if [[ $steps == *,cpu,* ]]; then  # CPU only (the machine's own onnxruntime), pinned
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
