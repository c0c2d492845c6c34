"""The data plane: engine builders and the model server (``infleet build``, ``infleet serve``).

Backend libraries (onnxruntime, tvm, tensorrt) are optional extras and imported lazily.
"""
