"""Runs a TVM engine over an .npz of inputs and writes an .npz of outputs.

A standalone script (it imports nothing from infleet): the arm64 gate runs it with Debian's
arm64 python3.11 under qemu-user, where only the TVM runtime and numpy are installed.
Usage: tvm_vmrun.py ENGINE.so INPUTS.npz OUTPUTS.npz ENTRY_PATTERN BATCH_SIZES INPUT_ORDER

The outputs are ``arr_0``, ``arr_1``... in the engine's order; ``seconds_b<N>`` holds the wall
time of each call at compiled batch size N, in order (the emulator's speed, kept for the record).
"""

import sys
import time

import numpy as np


def main(argv: list[str]) -> int:
    engine, inputs, outputs, entry, sizes, order = argv
    import tvm
    from tvm.runtime.vm import VirtualMachine

    vm = VirtualMachine(tvm.runtime.load_module(engine), tvm.cpu())
    compiled = sorted(int(s) for s in sizes.split(","))
    names = order.split(",")
    data = np.load(inputs)
    rows = len(data[names[0]])
    results = []
    seconds: dict[int, list[float]] = {}
    start = 0
    while start < rows:
        take = min(rows - start, compiled[-1])
        size = next(s for s in compiled if s >= take)
        args = []
        for n in names:
            a = data[n][start : start + take]
            if take < size:
                a = np.concatenate([a, np.repeat(a[-1:], size - take, axis=0)])
            args.append(tvm.runtime.tensor(np.ascontiguousarray(a)))
        t0 = time.perf_counter()
        out = vm[entry.format(batch=size)](*args)
        outs = [out] if hasattr(out, "numpy") else list(out)
        results.append([o.numpy()[:take] for o in outs])
        seconds.setdefault(size, []).append(time.perf_counter() - t0)
        start += take
    timings = {f"seconds_b{n}": np.asarray(t) for n, t in seconds.items()}
    arrays = [np.concatenate(p) for p in zip(*results, strict=True)]
    np.savez(outputs, *arrays, **timings)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
