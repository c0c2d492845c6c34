"""KServe's Python model server wrapping an ONNX Runtime session: the peer in bench_serve.py.

Run with the interpreter of a separate virtual environment that has ``kserve`` and
``onnxruntime`` (kserve pins many packages, so it stays out of the project's environment):

    python bench/kserve_peer.py MODEL.onnx PORT [THREADS]

It serves model ``cnn`` over KServe's v2 REST endpoint (input ``input``, output ``logits``),
one ``session.run`` per request, answering in binary when the client asks for it.
"""

from __future__ import annotations

import sys

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str, threads: int) -> None:
        super().__init__(name)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.ready = True

    async def predict(self, payload, headers=None, response_headers=None):
        assert isinstance(payload, InferRequest)
        x = payload.inputs[0].as_numpy()
        (y,) = self.session.run(["logits"], {"input": x})
        binary = bool((payload.parameters or {}).get("binary_data_output", False))
        output = InferOutput(name="logits", shape=list(y.shape), datatype="FP32")
        output.set_data_from_numpy(y, binary_data=binary)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[output],
            use_binary_outputs=binary,
        )


if __name__ == "__main__":
    path, port = sys.argv[1], int(sys.argv[2])
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    model = OnnxModel("cnn", path, threads)
    kserve.ModelServer(
        http_port=port, enable_grpc=False, enable_latency_logging=False, workers=1
    ).start([model])
