"""``infleet serve``: the Open Inference Protocol (KServe v2) model server.

Layers, from the process inwards (each imports only the ones below it):

    command.py    CLI entry point: ``configure``/``run``; configuration parsed in ``run()``
    process.py    event loop, model loading at startup, the SIGTERM drain
    http11.py     infleet's HTTP/1.1 server: asyncio protocol over httptools (llhttp)
    app.py        routes, admission, infer handler; the one place errors become HTTP codes
    codec.py      v2 JSON and binary-tensor wire format <-> internal tensors
    wire.py       pydantic models of the metadata and error responses
    dataplane.py  transport-free: model registry, health, metadata, validation, infer
    batcher.py    dynamic batching, bounded queue, inference in worker threads
    engines/      one engine-runtime interface; ONNX Runtime, TVM, TensorRT behind it
    metrics.py    Prometheus metrics (own registry, no globals)
    tensors.py    internal request/response types; datatypes.py: v2 <-> numpy
    errors.py     the error hierarchy, free of any web framework
    samples.py    small engines made on the spot for tests, benchmarks and demos
"""
