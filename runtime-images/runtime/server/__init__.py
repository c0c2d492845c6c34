"""``infleet serve``: the Open Inference Protocol (KServe v2) model server.

Layers, from the process inwards (each imports only the ones below it):

    command.py    CLI entry point: ``configure``/``run``; configuration parsed in ``run()``
    process.py    event loop, model loading at startup, the SIGTERM drain
    listener.py   infleet's HTTP/1.1 server: the listening socket, connection cap, timeouts
    http11.py     one connection: asyncio protocol over httptools (llhttp), pipelining
    framing.py    pure HTTP/1.1 framing: where input pieces end, the head of an answer
    app.py        routes, body admission, infer handler; the one place errors become HTTP codes
    codec.py      v2 JSON and binary-tensor wire format <-> internal tensors
    wire.py       pydantic models of the metadata and error responses, made from the answers
    dataplane.py  transport-free: model registry, health, metadata, admission and in-flight
                  count, validation, infer
    batcher.py    dynamic batching, bounded queue, inference in worker threads
    engines/      one engine-runtime interface; ONNX Runtime, TVM, TensorRT behind it
    metrics.py    Prometheus metrics (own registry, no globals)
    tensors.py    internal request/response and metadata types; datatypes.py: v2 <-> numpy
    errors.py     the error hierarchy, free of any web framework
    samples.py    small engines made on the spot for tests, benchmarks and demos
"""
