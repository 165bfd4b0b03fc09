"""Errors that mean "bad input" (reported as one clear line by the CLI), as opposed to bugs."""

from vlalign.config import ConfigError
from vlalign.data.folder import DatasetError
from vlalign.models.checkpoint import CheckpointError
from vlalign.training.loop import NonFiniteLossError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DatasetError, CheckpointError, NonFiniteLossError, FileNotFoundError, ValueError,
)
