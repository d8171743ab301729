"""Exit codes of the pisa-* commands; the README's "Exit codes" table lists the same."""

SUCCESS = 0
UNEXPECTED_ERROR = 1  # a bug or an error we have no better code for; --debug shows the traceback
USAGE_ERROR = 2  # bad command line (argparse uses 2 as well)
CONFIG_ERROR = 3  # config file missing, unreadable, or a bad --cfg-options
DATA_ERROR = 4  # dataset folder, annotation file or image missing or broken
CHECKPOINT_ERROR = 5  # checkpoint missing, corrupt, or not for this model
ENVIRONMENT_ERROR = 6  # missing package, mmcv without ops, CUDA asked for but absent
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
