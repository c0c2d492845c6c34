"""infleet.toolbox, the plumbing the dev cluster, tests and benches share (real processes and
sockets, no mocks)."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from infleet import toolbox


def test_free_port_can_be_bound() -> None:
    port = toolbox.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = iter([None, 0, "", "found"])
    assert toolbox.wait_until(lambda: next(calls), 5, "a value", interval=0.01) == "found"


def test_timeout_names_what_it_waited_for_the_last_error_and_the_state() -> None:
    def broken() -> None:
        raise ValueError("not listening")

    with pytest.raises(toolbox.WaitTimeout) as info:
        toolbox.wait_until(broken, 0.05, "the server to listen", lambda: "port closed",
                           interval=0.01)
    text = str(info.value)
    assert text.startswith("timed out after 0s waiting for the server to listen")
    assert "ValueError('not listening')" in text and "state: port closed" in text
    assert isinstance(info.value, TimeoutError)


def test_abort_ends_a_wait_at_once() -> None:
    def exited() -> None:
        raise RuntimeError("the process exited")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited"):
        toolbox.wait_until(lambda: None, 30, "never", abort=exited)
    assert time.monotonic() - started < 5


def test_stop_groups_kills_what_ignores_sigterm_and_its_children(tmp_path: Path) -> None:
    # A parent that ignores SIGTERM and a child of its own (same process group).
    script = ("import signal, subprocess, sys, time\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(60)\n")
    log = tmp_path / "out.log"
    proc = toolbox.spawn([sys.executable, "-c", script], log)
    child = toolbox.wait_until(lambda: log.read_text().strip(), 10, "the child's pid")
    assert toolbox.alive(proc.pid, proc) and toolbox.alive(int(child))
    started = time.monotonic()
    toolbox.stop_groups([proc.pid], 0.5, {proc.pid: proc})
    assert time.monotonic() - started >= 0.5  # it got its grace period first
    assert not toolbox.alive(proc.pid, proc)
    toolbox.wait_until(lambda: not toolbox.alive(int(child)), 10, "the child to go")
    assert os.getpgid(os.getpid()) != proc.pid  # its own group: this process was spared


def test_rss_of_this_process_is_counted() -> None:
    assert toolbox.rss_kib(os.getpid()) > 1000
