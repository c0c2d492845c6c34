"""Engine runtimes: one interface (``base.EngineRuntime``), one module per backend.

``load_engine`` picks the module from the manifest's backend through an explicit registry
and imports it only then, so a server image carries (and imports) only its own backend.
"""

from infleet.runtime.server.engines.base import EngineOptions, EngineRuntime, load_engine

__all__ = ["EngineOptions", "EngineRuntime", "load_engine"]
