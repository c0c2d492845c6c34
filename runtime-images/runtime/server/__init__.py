"""``infleet serve``: the Open Inference Protocol (KServe v2) model server.

Layers, from the wire inwards (each imports only the ones below it):

    command.py    CLI entry point: parses configuration in ``run()``, starts uvicorn
    app.py        pure-ASGI HTTP transport; the one place errors become HTTP codes
    codec.py      v2 JSON and binary-tensor wire format <-> internal tensors
    dataplane.py  transport-free: model registry, metadata, validation, infer
    batcher.py    dynamic batching, bounded queue, inference in worker threads
    engines/      one engine-runtime interface; ONNX Runtime, TVM, TensorRT behind it
    metrics.py    Prometheus metrics (own registry, no globals)
    errors.py     the error hierarchy, free of any web framework
"""
