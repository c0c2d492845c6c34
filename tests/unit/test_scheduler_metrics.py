"""Reading `infleet serve`'s /metrics: the text of the server's own registry, windows of two
scrapes, p99 from histogram buckets the way Prometheus computes it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infleet.runtime.server.metrics import Metrics, Outcome
from infleet.scheduler import metrics as m
from infleet.scheduler.errors import MetricsError
from infleet.scheduler.metrics import Histogram, PodScrape, observe_class, parse_exposition


def server_text(
    served: dict[str, int], latencies_s: list[float], queue: int = 0, model: str = "cnn",
    other_model: bool = True,
) -> str:
    """The exposition of the server's real registry after these observations."""
    metrics = Metrics()
    for outcome, n in served.items():
        metrics.requests.labels(model, outcome).inc(n)
    for v in latencies_s:
        metrics.request_duration.labels(model).observe(v)
    metrics.queue_depth.labels(model).set(queue)
    metrics.in_flight.set(queue + 1)
    metrics.ready.set(1)
    metrics.model_load.labels(model).set(0.5)
    if other_model:  # a second model on the same server must not leak into the first
        metrics.requests.labels("other", Outcome.SUCCESS).inc(1000)
        metrics.request_duration.labels("other").observe(9.0)
    return metrics.exposition().decode()


def test_names_match_the_server() -> None:
    text = server_text({Outcome.SUCCESS: 1}, [0.001])
    for name in (m.REQUESTS + "_total", m.LATENCY + "_bucket", m.QUEUE_DEPTH, m.IN_FLIGHT,
                 m.READY):
        assert name in text
    outcomes = {v for k, v in vars(Outcome).items() if not k.startswith("_")}
    assert outcomes == {m.SUCCESS, m.SERVER_ERROR, *m.REFUSED, *m.CLIENT_SIDE}


def test_parse_one_model_of_a_server() -> None:
    text = server_text(
        {Outcome.SUCCESS: 90, Outcome.OVERLOADED: 5, Outcome.CLIENT_ERROR: 3,
         Outcome.SERVER_ERROR: 2},
        [0.003] * 60 + [0.03] * 40, queue=7,
    )
    p = parse_exposition(text, "cnn")
    assert p.requests[Outcome.SUCCESS] == 90
    assert p.count() == 97  # client errors are not demand
    assert p.count(m.REFUSED) == 5
    assert p.latency.count == 100 and p.latency.sum == pytest.approx(0.003 * 60 + 0.03 * 40)
    assert p.latency.bounds[-1] == math.inf
    assert p.queue_depth == 7 and p.in_flight == 8 and p.ready


def test_bad_expositions_are_refused_with_the_reason() -> None:
    with pytest.raises(MetricsError, match="model 'absent': the server does not serve it"):
        parse_exposition(server_text({}, [0.001]), "absent")
    idle = parse_exposition(server_text({}, []), "cnn")  # loaded, never asked: idle
    assert idle.count() == 0 and idle.latency.count == 0
    with pytest.raises(MetricsError, match="not a Prometheus text exposition"):
        parse_exposition("infleet_serve_requests_total{model=\"cnn\" 3\n", "cnn")
    broken = (
        '# TYPE infleet_serve_request_duration_seconds histogram\n'
        'infleet_serve_request_duration_seconds_bucket{model="cnn",le="0.1"} 5\n'
        'infleet_serve_request_duration_seconds_bucket{model="cnn",le="+Inf"} 3\n'
    )
    with pytest.raises(MetricsError, match="not cumulative"):
        parse_exposition(broken, "cnn")


def test_quantile_follows_prometheus_histogram_quantile() -> None:
    # 100 observations: 50 in (0, 0.01], 40 in (0.01, 0.02], 10 in (0.02, 0.05]
    h = Histogram((0.01, 0.02, 0.05, math.inf), (50, 90, 100, 100))
    assert h.quantile(0.5) == pytest.approx(0.01)
    assert h.quantile(0.7) == pytest.approx(0.015)
    assert h.quantile(0.99) == pytest.approx(0.02 + 0.03 * 9 / 10)
    assert h.share_within(0.015) == pytest.approx(0.7)
    # a rank in the +Inf bucket answers the highest finite bound
    assert Histogram((0.01, math.inf), (1, 100)).quantile(0.99) == 0.01
    assert Histogram((0.01, math.inf), (0, 0)).quantile(0.99) is None


@given(st.lists(st.floats(1e-5, 20), min_size=1, max_size=300), st.floats(0.5, 0.999))
@settings(max_examples=100, deadline=None)
def test_quantile_lies_in_the_bucket_of_the_true_quantile(values: list[float], q: float) -> None:
    metrics = Metrics()
    for v in values:
        metrics.request_duration.labels("cnn").observe(v)
    text = metrics.exposition().decode()
    h = parse_exposition(text, "cnn").latency
    true = sorted(values)[max(0, math.ceil(q * len(values)) - 1)]
    est = h.quantile(q)
    assert est is not None
    finite = [b for b in h.bounds if b != math.inf]
    above = next((b for b in finite if b >= true), finite[-1])
    below = max((b for b in finite if b < true), default=0.0)
    assert below - 1e-12 <= est <= above + 1e-12


def scrape(pod: str, at: float, text: str | None) -> PodScrape:
    return PodScrape(pod, at, parse_exposition(text, "cnn") if text else None,
                     None if text else "timed out")


def test_a_window_of_two_scrapes() -> None:
    before = [scrape("a", 0.0, server_text({Outcome.SUCCESS: 100}, [0.004] * 100)),
              scrape("b", 0.5, server_text({Outcome.SUCCESS: 50}, [0.004] * 50))]
    after = [
        scrape("a", 10.0, server_text({Outcome.SUCCESS: 1100, Outcome.OVERLOADED: 10},
                                      [0.004] * 1090 + [0.04] * 20, queue=3)),
        scrape("b", 10.5, server_text({Outcome.SUCCESS: 1050}, [0.004] * 1050, queue=2)),
    ]
    o = observe_class(before, after, slo_ms=25)
    assert o is not None
    assert o.rate_rps == pytest.approx(101 + 100)
    assert o.refused_rps == pytest.approx(1.0)
    assert o.requests == pytest.approx(2010)
    assert o.pods_known == 2 and o.pods_unknown == 0
    assert o.queue_depth == 5 and o.window_s == pytest.approx(10.0)
    # 1,990 requests in the (2, 5] ms bucket, 20 in (20, 50]: rank 0.99 x 2010 = 1989.9
    assert o.p99_ms == pytest.approx(2 + 3 * 1989.9 / 1990)
    assert o.within_slo == pytest.approx((1990 + 20 * (25 - 20) / 30) / 2010)


def test_a_pod_that_does_not_answer_is_unknown_not_idle() -> None:
    text0 = server_text({Outcome.SUCCESS: 0}, [])
    text1 = server_text({Outcome.SUCCESS: 500}, [0.004] * 500)
    before = [scrape("a", 0.0, text0), scrape("b", 0.0, text0), scrape("c", 0.0, None)]
    after = [scrape("a", 5.0, text1), scrape("b", 5.0, None), scrape("c", 5.0, text1)]
    o = observe_class(before, after)
    assert o is not None
    assert (o.pods_known, o.pods_unknown) == (1, 2)
    assert o.rate_rps == pytest.approx(3 * 100)  # a's 100 rps taken for all three
    assert observe_class(before, [scrape("a", 5.0, None)]) is None


def test_a_restarted_pod_starts_again_from_zero() -> None:
    before = [scrape("a", 0.0, server_text({Outcome.SUCCESS: 5000}, [0.004] * 5000))]
    after = [scrape("a", 10.0, server_text({Outcome.SUCCESS: 200}, [0.004] * 200))]
    o = observe_class(before, after)
    assert o is not None and o.rate_rps == pytest.approx(20) and o.requests == 200


def test_a_new_pod_counts_everything_since_the_last_round() -> None:
    """A pod that was not serving at the last round began counting from zero in the
    window (a restarted operator has no last round: then it is unknown)."""
    before = [scrape("a", 0.0, server_text({Outcome.SUCCESS: 1000}, [0.004] * 1000))]
    after = [scrape("a", 10.0, server_text({Outcome.SUCCESS: 1500}, [0.004] * 1500)),
             scrape("new", 10.0, server_text({Outcome.SUCCESS: 200}, [0.004] * 200))]
    o = observe_class(before, after)
    assert o is not None
    assert (o.pods_known, o.pods_unknown) == (2, 0)
    assert o.rate_rps == pytest.approx(50 + 20) and o.requests == 700
    only_new = observe_class([], after[1:], since=5.0)
    assert only_new is not None and only_new.rate_rps == pytest.approx(40)
    assert observe_class([], after[1:]) is None  # no last round: nothing to measure from
