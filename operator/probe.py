"""The test inference that decides ``Available``: a real Open Inference Protocol request.

Pods that are Running and pass their readiness probe may still answer 404 or 500 to the
first inference (KServe users report both right after Ready). So before a class counts as
available, the operator reads the model's metadata from one of its Ready pods, sends one
request shaped from it (dynamic dimensions as 1, zeros), and checks the answer: status 200,
every output the metadata names, with as many elements as its shape says, and finite numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from infleet.operator.children import HTTP_PORT
from infleet.operator.planner import ProbeResult, ProbeTarget

_ZERO: dict[str, Any] = {"BOOL": False, "BYTES": ""}


def request_for(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """An inference request of one row of zeros for the inputs ``metadata`` describes."""
    inputs = []
    for spec in metadata.get("inputs") or ():
        shape = [1 if int(d) < 0 else int(d) for d in spec["shape"]]
        count = math.prod(shape)
        zero = _ZERO.get(spec["datatype"], 0)
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"],
                       "data": [zero] * count})
    return {"inputs": inputs}


def check_answer(metadata: Mapping[str, Any], answer: Mapping[str, Any]) -> str | None:
    """What is wrong with ``answer``; None when it is a proper one."""
    want = {o["name"] for o in metadata.get("outputs") or ()}
    got = {o.get("name"): o for o in answer.get("outputs") or ()}
    missing = sorted(want - set(got))
    if missing:
        return f"outputs missing from the answer: {', '.join(missing)}"
    for name, out in got.items():
        data = out.get("data")
        shape = out.get("shape") or []
        if not isinstance(data, list) or len(data) != math.prod(int(d) for d in shape):
            return f"output {name}: {len(data) if isinstance(data, list) else 'no'} elements " \
                   f"for shape {shape}"
        if any(isinstance(v, float) and not math.isfinite(v) for v in data):
            return f"output {name} holds NaN or infinite values"
    return None


async def probe(client: httpx.AsyncClient, target: ProbeTarget) -> ProbeResult:
    base = f"http://{target.ip}:{HTTP_PORT}/v2/models/{target.model}"
    now = datetime.now(UTC)

    def result(ok: bool, message: str) -> ProbeResult:
        return ProbeResult(ok=ok, engine_key=target.engine_key, message=message, checked_at=now)

    # A slow class (emulated) gets its own read timeout; connecting stays quick.
    timeout: Any = (httpx.Timeout(target.timeout_s, connect=3.0) if target.timeout_s
                    else httpx.USE_CLIENT_DEFAULT)
    try:
        meta = await client.get(base, timeout=timeout)
        if meta.status_code != 200:
            return result(False, f"pod {target.pod}: GET model metadata: {meta.status_code} "
                                 f"{meta.text[:200]}")
        metadata = meta.json()
        answer = await client.post(f"{base}/infer", json=request_for(metadata), timeout=timeout)
        if answer.status_code != 200:
            return result(False, f"pod {target.pod}: test inference: {answer.status_code} "
                                 f"{answer.text[:200]}")
        problem = check_answer(metadata, answer.json())
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        return result(False, f"pod {target.pod}: test inference failed: {e}")
    if problem:
        return result(False, f"pod {target.pod}: {problem}")
    return result(True, f"pod {target.pod} answered a test inference")
