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


class ConfigError(PisaError):
    exit_code = exit_codes.CONFIG_ERROR


class DataError(PisaError):
    exit_code = exit_codes.DATA_ERROR


class CheckpointError(PisaError):
    exit_code = exit_codes.CHECKPOINT_ERROR


class EnvironmentProblem(PisaError):
    """A package, a compiled op or a device that the run needs is missing."""

    exit_code = exit_codes.ENVIRONMENT_ERROR


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
