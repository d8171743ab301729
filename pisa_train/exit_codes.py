"""Exit codes of the pisa-* commands; docs/cli.md's "Exit codes" table lists the same."""

SUCCESS = 0
UNEXPECTED_ERROR = 1  # a bug or an error we have no better code for; --debug shows the traceback
USAGE_ERROR = 2  # bad command line (argparse uses 2 as well)
CONFIG_ERROR = 3  # config file missing, unreadable, or a bad --cfg-options
DATA_ERROR = 4  # dataset folder, annotation file or image missing or broken
CHECKPOINT_ERROR = 5  # checkpoint missing, corrupt, or not for this model
ENVIRONMENT_ERROR = 6  # missing package, mmcv without ops, CUDA asked for but absent, out of GPU memory, port in use
SAVE_ERROR = 7  # a checkpoint could not be written (disk full, I/O error); the earlier ones are intact
NONFINITE_LOSS = 8  # the loss became NaN or Inf; the last checkpoint before it is kept
# Stopped by SIGTERM or SIGINT after saving a checkpoint at an iteration boundary: run again
# with --resume. 75 is EX_TEMPFAIL in sysexits.h, "try again later", which is what it means.
STOPPED_AND_SAVED = 75
INTERRUPTED = 130  # stopped at once (a second Ctrl-C, or Ctrl-C outside training) (128 + SIGINT), as shells report it
