"""The exceptions dmlbench raises for bad input, so callers can tell them from bugs."""


class ConfigError(ValueError):
    """A value given by the user (notebook parameter, study file, CLI flag) is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A name that is not in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class IncompatibleError(ConfigError):
    """A loss crossed with a miner whose output it cannot consume."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the places searched; the message says how to get them."""


class SealedSplitError(PermissionError):
    """The test split was asked for where it is sealed: while tuning, only train and validation exist."""


class DamagedFileError(ConfigError):
    """A file dmlbench wrote (a checkpoint, a search index) is truncated, damaged or holds what it
    should not; the message names the file and how to get a good one back."""


class MissingCheckpointError(ConfigError, FileNotFoundError):
    """A finished run folder without its checkpoint.pt (the repository ships few of them); the
    message names the file."""


class DiskFullError(RuntimeError):
    """A write failed because the disk (or the user's quota) is full; the message names the folder,
    about how much more space is needed, and that rerunning the same command resumes."""

    exit_status = 4  # of the dmlbench command it ends (a study's worker processes report it so)
