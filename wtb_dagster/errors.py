"""The WTBError family: every user mistake is reported as one of these, naming the thing and the fix."""


class WTBError(Exception):
    """Base class of every error the bench raises for a user mistake or a bad setting."""


class ConfigError(WTBError):
    """A setting, URL or `wtb.yaml` entry is invalid."""


class WorkflowError(WTBError):
    """A workflow cannot be found, imported or built."""


class VariantError(WTBError):
    """A node variant or combination names something the workflow does not have."""


class DatasetError(WTBError):
    """A test-case dataset is malformed; the message carries the file and line."""


class ThreadNotFoundError(WTBError):
    """No thread, or no checkpoint, with the given id exists in the checkpointer."""


class ExecutionError(WTBError):
    """The executor cannot run (e.g. Ray unreachable) — not a failure of a single case."""
