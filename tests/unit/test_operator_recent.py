"""The operator's memory of its own recent writes: what a lagging watch has not delivered."""

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
