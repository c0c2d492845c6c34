"""Where the autoscaler's observations come from: the serving pods themselves, or Prometheus.

Two sources, one result per class (:class:`~infleet.scheduler.metrics.ClassObservation`):

- :class:`PodScraper` (the default) fetches every serving pod's ``/metrics`` concurrently
  with bounded timeouts. The caller keeps the previous round and passes both rounds to
  :func:`~infleet.scheduler.metrics.observe_class`. A pod that does not answer (refused,
  timed out, a non-200, text that does not parse) becomes a :class:`PodScrape` without
  metrics: unknown load, never zero.
- :class:`PrometheusSource` asks a Prometheus server that scrapes the pods, through its HTTP
  API, with the PromQL of :func:`promql` (also in the README). Pods whose ``up`` is 0 are
  unknown and the class's rates are extrapolated over them, as for scrapes.

Both only read; errors of the transport are wrapped in
:class:`~infleet.scheduler.errors.MetricsError` (per pod for scrapes, where they make the pod
unknown; for the whole answer from Prometheus).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infleet.scheduler.errors import MetricsError
from infleet.scheduler.metrics import (
    CLIENT_SIDE,
    IN_FLIGHT,
    LATENCY,
    QUEUE_DEPTH,
    REFUSED,
    REQUESTS,
    SERVER_ERROR,
    SUCCESS,
    ClassObservation,
    PodScrape,
    parse_exposition,
)

MAX_BODY = 4 * 2**20
"""A /metrics body larger than this is refused (a server's is a few KiB)."""


@dataclass(frozen=True, slots=True)
class PodTarget:
    pod: str
    url: str
    """The pod's metrics URL, e.g. ``http://10.1.2.3:8080/metrics``."""


class PodScraper:
    """Scrapes serving pods' ``/metrics``; one shared :class:`httpx.AsyncClient`."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        timeout_s: float = 2.0,
        concurrency: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0 or concurrency < 1:
            raise ValueError("need a positive timeout and concurrency >= 1")
        self._client = client
        self._timeout_s = timeout_s
        self._limit = asyncio.Semaphore(concurrency)
        self._clock = clock

    async def scrape(self, targets: Sequence[PodTarget], model: str) -> list[PodScrape]:
        """One round: every target at once (at most ``concurrency`` in flight), each within
        ``timeout_s`` from connect to the last byte. In the order of ``targets``."""
        return list(await asyncio.gather(*(self._one(t, model) for t in targets)))

    async def _one(self, target: PodTarget, model: str) -> PodScrape:
        async with self._limit:
            try:
                async with asyncio.timeout(self._timeout_s):
                    text = await self._fetch(target.url)
                metrics = parse_exposition(text, model)
            except TimeoutError:
                return self._unknown(target, f"no answer within {self._timeout_s:g} s")
            except httpx.HTTPError as e:
                return self._unknown(target, f"{type(e).__name__}: {e}")
            except MetricsError as e:
                return self._unknown(target, str(e))
            return PodScrape(target.pod, self._clock(), metrics)

    async def _fetch(self, url: str) -> str:
        timeout = httpx.Timeout(self._timeout_s)
        async with self._client.stream("GET", url, timeout=timeout) as response:
            if response.status_code != 200:
                raise MetricsError(f"HTTP {response.status_code} from {url}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_BODY:
                    raise MetricsError(f"{url}: body above {MAX_BODY} bytes")
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")

    def _unknown(self, target: PodTarget, why: str) -> PodScrape:
        return PodScrape(target.pod, self._clock(), None, why)


# --- Prometheus ----------------------------------------------------------------------------

def _regex(values: frozenset[str]) -> str:
    return "|".join(sorted(values))


def promql(model: str, selector: str, by: str, window_s: float) -> dict[str, str]:
    """The instant queries behind one observation per class.

    ``selector`` is the label matchers that pick the deployment's serving pods (for
    example ``namespace="prod",infleet_dev_deployment="resnet50"``), ``by`` the label that
    names their class, ``window_s`` the range of ``rate`` (at least twice the scrape
    interval).
    """
    if not model or '"' in model or "\\" in model:
        raise ValueError(f"model name {model!r} cannot be quoted in PromQL")
    w = f"{max(1, round(window_s))}s"
    sel = f"{selector}," if selector else ""
    m = f'{sel}model="{model}"'
    demand = f'{m},outcome!~"{_regex(CLIENT_SIDE)}"'
    total = f"{REQUESTS}_total"
    return {
        "rate": f"sum by ({by}) (rate({total}{{{demand}}}[{w}]))",
        "success": f'sum by ({by}) (rate({total}{{{m},outcome="{SUCCESS}"}}[{w}]))',
        "refused": f'sum by ({by}) (rate({total}{{{m},outcome=~"{_regex(REFUSED)}"}}[{w}]))',
        "errors": f'sum by ({by}) (rate({total}{{{m},outcome="{SERVER_ERROR}"}}[{w}]))',
        "requests": f"sum by ({by}) (increase({total}{{{demand}}}[{w}]))",
        "p99": f"histogram_quantile(0.99, sum by ({by}, le) "
               f"(rate({LATENCY}_bucket{{{m}}}[{w}])))",
        "queue": f"sum by ({by}) ({QUEUE_DEPTH}{{{m}}})",
        "in_flight": f"sum by ({by}) ({IN_FLIGHT}{{{selector}}})",
        "up": f"count by ({by}) (up{{{selector}}} == 1)",
        "down": f"count by ({by}) (up{{{selector}}} == 0)",
    }


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Series(_Wire):
    metric: dict[str, str]
    value: Annotated[list[Any], Field(min_length=2, max_length=2)]


class _Data(_Wire):
    resultType: str  # the API's spelling
    result: list[_Series]


class _Answer(_Wire):
    status: str
    data: _Data | None = None
    error: str | None = None


class PrometheusSource:
    """Observations per class from a Prometheus server's HTTP API (``/api/v1/query``)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, *, timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._clock = clock

    async def _query(self, query: str, by: str, at: float) -> dict[str, float]:
        """One instant query's vector at time ``at``, keyed by the value of label ``by``."""
        url = f"{self._base}/api/v1/query"
        try:
            async with asyncio.timeout(self._timeout_s):
                r = await self._client.get(url, params={"query": query, "time": f"{at:.3f}"},
                                           timeout=httpx.Timeout(self._timeout_s))
        except TimeoutError as e:
            raise MetricsError(f"Prometheus at {self._base}: no answer within "
                               f"{self._timeout_s:g} s") from e
        except httpx.HTTPError as e:
            raise MetricsError(f"Prometheus at {self._base}: {type(e).__name__}: {e}") from e
        try:
            answer = _Answer.model_validate_json(r.content)
        except ValidationError as e:
            raise MetricsError(f"Prometheus at {self._base}: HTTP {r.status_code}, not an API "
                               f"answer: {r.text[:200]}") from e
        if answer.status != "success" or answer.data is None:
            raise MetricsError(f"Prometheus refused {query!r}: {answer.error}")
        if answer.data.resultType != "vector":
            raise MetricsError(f"Prometheus answered a {answer.data.resultType} to {query!r}")
        out: dict[str, float] = {}
        for s in answer.data.result:
            try:
                value = float(s.value[1])
            except (TypeError, ValueError) as e:
                raise MetricsError(f"Prometheus: {s.value[1]!r} is not a number") from e
            out[s.metric.get(by, "")] = value
        return out

    async def observe(
        self, model: str, *, selector: str, by: str, window_s: float
    ) -> dict[str, ClassObservation]:
        """Per class (the value of label ``by``): the window's load. Classes without a pod
        that is up are absent (nothing measured), never zero."""
        queries = promql(model, selector, by, window_s)
        at = self._clock()  # every query at one instant: a scrape between them cannot skew
        values = dict(zip(queries, await asyncio.gather(*(self._query(q, by, at) for q in
                                                          queries.values())), strict=True))
        out: dict[str, ClassObservation] = {}
        for cls, up in values["up"].items():
            known = int(up)
            if known <= 0:
                continue
            unknown = int(values["down"].get(cls, 0))
            scale = (known + unknown) / known  # rate() saw only the pods that were up

            def get(name: str, cls: str = cls) -> float:
                v = values[name].get(cls, 0.0)
                return 0.0 if math.isnan(v) else v

            p99 = values["p99"].get(cls)
            out[cls] = ClassObservation(
                rate_rps=get("rate") * scale,
                success_rps=get("success") * scale,
                refused_rps=get("refused") * scale,
                error_rps=get("errors") * scale,
                p99_ms=None if p99 is None or math.isnan(p99) else p99 * 1000,
                requests=get("requests"),
                queue_depth=get("queue"),
                in_flight=get("in_flight"),
                window_s=window_s,
                pods_known=known,
                pods_unknown=unknown,
            )
        return out
