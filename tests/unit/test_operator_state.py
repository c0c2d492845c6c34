"""The operator's memory of its own recent writes (what a lagging watch has not delivered), its
retry backoff and its bound on reconciles at once."""

from __future__ import annotations

from infleet.operator.state import RECENT_WRITE_S, RecentWrites

KEY = ("ns", "Deployment", "cnn-x86")


def test_the_same_content_written_a_moment_ago_is_not_written_again() -> None:
    recent = RecentWrites()
    recent.remember(KEY, {"spec": {"replicas": 2}}, now=100.0)
    assert recent.written(KEY, {"spec": {"replicas": 2}}, now=100.5)


def test_other_content_another_object_or_an_old_write_is_written() -> None:
    recent = RecentWrites()
    recent.remember(KEY, {"spec": {"replicas": 2}}, now=100.0)
    assert not recent.written(KEY, {"spec": {"replicas": 3}}, now=100.5)
    assert not recent.written(("ns", "Service", "cnn-x86"), {"spec": {"replicas": 2}}, 100.5)
    # past the window the watched object alone decides (drift by others is corrected)
    assert not recent.written(KEY, {"spec": {"replicas": 2}}, now=100.0 + RECENT_WRITE_S)


def test_a_deleted_object_is_forgotten() -> None:
    recent = RecentWrites()
    recent.remember(KEY, {"a": 1}, now=1.0)
    recent.forget(KEY)
    assert not recent.written(KEY, {"a": 1}, now=1.1)


def test_stale_entries_are_dropped_as_the_memory_grows() -> None:
    recent = RecentWrites()
    for i in range(5000):
        recent.remember(("ns", "Event", str(i)), i, now=float(i) * 0.01)
    assert len(recent.entries) < 4200
    assert recent.written(("ns", "Event", "4999"), 4999, now=50.0)


def test_retries_are_jittered_around_the_backoff_schedule() -> None:
    from infleet.operator.handlers import RETRY_BACKOFF_S, _backoff

    for failures, base in enumerate(RETRY_BACKOFF_S, start=1):
        waits = {_backoff(failures) for _ in range(50)}
        assert all(0.75 * base <= w <= 1.25 * base for w in waits)
        assert len(waits) > 1  # deployments that failed together do not retry together
    assert 0.75 * RETRY_BACKOFF_S[-1] <= _backoff(99) <= 1.25 * RETRY_BACKOFF_S[-1]


def test_reconciles_at_once_are_bounded_by_the_configuration() -> None:
    import asyncio

    import httpx

    from infleet.api.config import OperatorConfig
    from infleet.operator.kube import Credentials, KubeClient
    from infleet.operator.state import OperatorState
    from infleet.scheduler.policy import ClusterPolicy

    async def run() -> int:
        kube = KubeClient(Credentials(server="https://127.0.0.1:1"))
        state = OperatorState(OperatorConfig(max_concurrent_reconciles=3), ClusterPolicy(),
                              kube, httpx.AsyncClient())
        running = peak = 0

        async def reconcile() -> None:
            nonlocal running, peak
            async with state.slots:
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.01)
                running -= 1

        await asyncio.gather(*(reconcile() for _ in range(20)))
        await kube.close()
        await state.http.aclose()
        return peak

    assert asyncio.run(run()) == 3
