"""Read-only mounts for the local executor's processes, where this machine allows them.

The executor maps mount paths to local folders instead of mounting (no container runtime), so a
``readOnly`` mount is an ordinary folder. Where the executor may create a mount namespace
(root, or a kernel that grants an unprivileged user namespace the right to mount), each
process that has read-only mounts starts in a mount namespace of its own in which each such
folder is bind-mounted onto itself read-only: writes fail with EROFS for that process only,
while a build Job's process writing the same claim in its own namespace is unaffected.

Elsewhere read-only mounts are not enforced (the folder stays writable); the executor says so
in its log and on its nodes (annotation ``dev.infleet.dev/read-only-mounts``).
"""

from __future__ import annotations

import ctypes
import functools
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
ANNOTATION = "dev.infleet.dev/read-only-mounts"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def make_read_only(paths: tuple[str, ...]) -> None:
    """In the calling process (a child between fork and exec): a private mount namespace in
    which every path is a read-only bind mount of itself."""
    libc = _libc()
    if os.geteuid() == 0:
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    else:  # an unprivileged user namespace that maps this user onto itself
        uid, gid = os.geteuid(), os.getegid()
        _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
        with open("/proc/self/setgroups", "w") as f:  # noqa: PTH123 - between fork and exec
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:  # noqa: PTH123
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:  # noqa: PTH123
            f.write(f"{gid} {gid} 1")
    # Nothing done here may reach the executor's namespace.
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    for path in paths:
        target = path.encode()
        _check(libc.mount(target, target, None, MS_BIND | MS_REC, None), f"bind {path}")
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        try:
            _check(libc.mount(None, target, None, flags, None), f"remount {path} read-only")
        except OSError:
            # In a user namespace the flags the parent mount carries are locked: keep them.
            _check(libc.mount(None, target, None, flags | MS_NOSUID | MS_NODEV, None),
                   f"remount {path} read-only")


@functools.cache
def supported() -> bool:
    """Whether :func:`make_read_only` works here (tried once, in a forked child)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            make_read_only(("/tmp",))  # noqa: S108 - any existing folder
            code = 0
        except BaseException:  # noqa: S110 - the exit code is the answer
            pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
