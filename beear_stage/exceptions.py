"""Exception hierarchy for beear-stage.

Every error the library raises on bad input derives from `BEEARError`, so callers (the Prefect
tasks, the CLI) can turn it into a clear message and a non-zero exit code without catching
programming errors by accident.
"""


class BEEARError(Exception):
    """Base class for every error beear-stage raises on purpose."""


class ConfigError(BEEARError, ValueError):
    """A configuration value is missing, out of range or inconsistent with another."""


class DataError(BEEARError, ValueError):
    """An anchoring or evaluation data file is missing, malformed or empty."""


class CheckpointError(BEEARError):
    """A checkpoint cannot be loaded safely (pickle weights, custom code, unsupported model)."""


class MitigationError(BEEARError):
    """The mitigation diverged (NaN or exploding losses) and its result must not be used."""


class GateError(BEEARError):
    """A release gate could not be evaluated."""
