"""The errors pisa-train reports to users as one line and an exit code.

Raise one of these where a user's input is wrong, with a message that says what
was expected, what was found and how to fix it. ``error_reporting`` turns them
into a line on stderr and the exit code named here.
"""
from pisa_train import exit_codes


class PisaError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    exit_code = exit_codes.UNEXPECTED_ERROR
    label = "error"  # the word after "pisa-train:" in the one line on stderr
    # Called once the line is on stderr. Set where every process of a distributed run raises this
    # error at the same step (engine/hooks/training_guards.py): a barrier, because torchrun stops
    # the other processes as soon as one exits, maybe before they have written their line.
    after_report = None


class UsageError(PisaError):
    exit_code = exit_codes.USAGE_ERROR


class UnknownOptionError(UsageError, TypeError):
    """A keyword argument of pisa_train.train/evaluate/infer that is none of the command's options:
    a TypeError too, as Python raises for an unexpected keyword argument."""


class ConfigError(PisaError):
    exit_code = exit_codes.CONFIG_ERROR


class ExportMismatch(ConfigError):
    """pisa-export: the exported graph detects differently from the PyTorch model; nothing is written."""


class DataError(PisaError):
    exit_code = exit_codes.DATA_ERROR


class CheckpointError(PisaError):
    exit_code = exit_codes.CHECKPOINT_ERROR


class EnvironmentProblem(PisaError):
    """A package, a compiled op or a device that the run needs is missing."""

    exit_code = exit_codes.ENVIRONMENT_ERROR


class LockHeld(EnvironmentProblem):
    """Another process holds the lock of the folder this command would work in (files.hold_exclusive_lock):
    like a port in use, something else on the machine has it."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the path given. Also a FileNotFoundError, as mmengine's own loader raises
    for a missing file, so that code calling mmengine's API (``load_checkpoint``, ``Runner.resume``)
    and catching that still catches it once pisa-train's loader is in place."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle needs more than weights and mmengine's training state."""


class CheckpointSaveError(PisaError):
    """A checkpoint could not be written; the earlier ones are intact."""

    exit_code = exit_codes.SAVE_ERROR


class NonFiniteLossError(PisaError):
    exit_code = exit_codes.NONFINITE_LOSS


class TrainingStopped(PisaError):
    """Not a failure: a stop was asked for (SIGTERM/SIGINT) and a checkpoint saved."""

    exit_code = exit_codes.STOPPED_AND_SAVED
    label = "stopped"
