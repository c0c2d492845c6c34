"""infleet: one model served across a heterogeneous Kubernetes inference fleet."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("infleet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
