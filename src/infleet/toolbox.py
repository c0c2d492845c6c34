"""Small plumbing shared by the dev cluster, the tests and the benches: free ports, waiting on a
condition with a deadline, child processes in process groups of their own.

Standard library only (no pytest, no HTTP client: outgoing HTTP goes through httpx where it
is made). A wait never sleeps a fixed time: it polls a condition and, when the deadline
passes, says what it waited for, the last error the condition raised and, when asked, the
state it saw instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the kernel's pick; another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class WaitTimeout(TimeoutError):
    """A wait ran out of time; the message says what it waited for and what it saw."""


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    explain: Callable[[], str] | None = None,
    interval: float = 0.25,
    abort: Callable[[], None] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy, and return that.

    ``probe`` raising counts as not yet (the last error is reported on timeout). ``abort``
    runs before each try and may raise to end the wait at once (say, the process being waited
    for has exited). On timeout: :class:`WaitTimeout` naming ``what``, the last error and
    ``explain()``.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if abort is not None:
            abort()
        try:
            value = probe()
            if value:
                return value
            last_error = None
        except Exception as e:
            last_error = e
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = f"; last error: {last_error!r}" if last_error else ""
    if explain is not None:
        try:
            detail += f"; state: {explain()}"
        except Exception as e:
            detail += f"; (could not read the state: {e!r})"
    raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def remaining(deadline: float, floor: float = 0.0) -> float:
    """Seconds left until a ``time.monotonic()`` deadline (never below ``floor``)."""
    return max(deadline - time.monotonic(), floor)


# -- child processes ---------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """In a child between fork and exec: receive ``sig`` when the parent exits (Linux), so a
    crashed parent leaves no process behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def spawn(
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (never a shell) in a session and process group of its own, stdout and
    stderr appended to ``log``, stdin closed. ``stop_groups`` later ends it and its children."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
            preexec_fn=preexec,
        )


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group ``pid`` leads (a process started by :func:`spawn`)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def alive(pid: int, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Whether ``pid`` still runs; a zombie (exited, not yet reaped by someone else) is gone."""
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_groups(
    pids: Sequence[int], grace: float,
    procs: Mapping[int, subprocess.Popen[bytes]] | None = None,
) -> None:
    """SIGTERM each process group (in the order given), then SIGKILL every group still alive
    after ``grace`` seconds in all; reap the ones this process started (``procs``)."""
    procs = procs or {}
    for pid in pids:
        signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in pids:
        proc = procs.get(pid)
        while time.monotonic() < deadline and alive(pid, proc):
            time.sleep(0.05)
        if alive(pid, proc):
            signal_group(pid, signal.SIGKILL)
        if proc is not None:  # reap it; one stuck in the kernel past SIGKILL is left to init
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children (Linux /proc: the children
    of each of its threads, since a child belongs to the thread that forked it)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop(0)
        try:
            tids = [p.name for p in Path(f"/proc/{current}/task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            try:
                children = Path(f"/proc/{current}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            found.extend(int(c) for c in children)
            todo.extend(int(c) for c in children)
    return found


def kill_tree(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal ``pid`` and every process below it, wherever their process groups are.

    The list is read before any signal is sent: a killed parent's children are re-parented
    and could not be found afterwards."""
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


def rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants, in KiB (Linux /proc)."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines()
                              if line.startswith("VmRSS:")))
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, StopIteration):
            continue
        todo.extend(int(c) for c in children)
    return total
