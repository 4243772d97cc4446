"""convzoo's own errors.

A :class:`ConvzooError` is a user mistake or bad input: the command line prints its
message on one line and exits with status 2. Anything else is an internal failure
(exit status 1).
"""

import errno


class ConvzooError(Exception):
    """A user mistake or bad input, reported as one clear line."""


class ModelError(ConvzooError, ValueError):
    """A bad model name or model option."""


class DataError(ConvzooError):
    """Data that is missing, unreadable, truncated or not what it claims to be."""


class CheckpointError(ConvzooError):
    """A checkpoint that is missing, corrupt, foreign or unsafe to load."""


class ConfigError(ConvzooError, ValueError):
    """A training option or recipe that cannot be used."""


class OutputError(ConvzooError, OSError):
    """The file system refused a file convzoo writes (disk full, file-size limit, a
    read-only or unwritable folder). It is also an OSError with the failure's errno."""


# errno values of a file system that refuses a write: the user must make room or choose
# another place, so these are reported as one line, not as an internal failure.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)
