"""The root of infleet's error hierarchy.

    InfleetError
    ├── infleet.api.SpecError              invalid InferenceDeployment spec
    └── (each package adds its own branch in its errors.py)

Every package's errors derive from :class:`InfleetError`, so entry points can tell
infleet's own failures (reported to the user as one clear line, non-zero exit) from bugs.
"""


class InfleetError(Exception):
    """Base class of infleet's errors; ``str(e)`` is a message for people."""
