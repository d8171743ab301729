"""What a command was asked to do, as a frozen dataclass: the typed hand-off from the command line
(cli/*.py) and the Python API (api.py) to the config builders (build.py).

One field per command-line option that reaches the builder or the run, named as argparse names the
option's destination (``--work-dir`` -> ``work_dir``, ``--no-progress`` -> ``progress``), with the
option's default. ``from_namespace`` is the one mapping from a parsed command line: it refuses a
Namespace whose options and the request's fields differ (a flag renamed on one side only), so a
rename fails at once (tests/test_requests.py checks every parser against its request) instead of
silently becoming the default. Options that only steer the command itself (``--debug``,
``--nproc``...) are listed in ``COMMAND_LINE_ONLY`` and never reach the builders.

Values are checked where they are used (build.py); here a list becomes a tuple (the request is
frozen) and a ``cfg_options`` mapping (the Python API's ``cfg_options={"key": value}``) stays as
given.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

# --cfg-options and --cfg-add: "KEY=VALUE" items from the command line, or a mapping of dotted keys
# to values from Python (whose values need no parsing).
ConfigOverrides = tuple[str, ...] | Mapping[str, Any]


def _frozen_value(value):
    if isinstance(value, Mapping):
        return MappingProxyType(dict(value))
    if isinstance(value, list):
        return tuple(value)
    return value


class _Request:
    # Options of the command line that are not in the request (they decide how the command runs:
    # --debug, --list, --doctor, the launch of processes), named by their argparse destinations.
    COMMAND_LINE_ONLY: ClassVar[frozenset[str]] = frozenset({"debug"})
    # Fields that may be one string or several (a str given for them becomes a 1-tuple).
    SEQUENCE_FIELDS: ClassVar[frozenset[str]] = frozenset({"cfg_options", "cfg_add", "trust_checkpoint",
                                                            "vis_backend"})

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in self.SEQUENCE_FIELDS and isinstance(value, str):
                value = (value,)
            object.__setattr__(self, field.name, _frozen_value(value))

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_namespace(cls, args: argparse.Namespace):
        """The request a parsed command line makes; a RuntimeError (a bug, not a user's mistake)
        where the parser's options and the request's fields are not the same names."""
        given = vars(args)
        options = set(given) - cls.COMMAND_LINE_ONLY
        if options != cls.field_names():
            raise RuntimeError(
                f"{cls.__name__} and its command line disagree: options without a field: "
                f"{sorted(options - cls.field_names())}, fields without an option: "
                f"{sorted(cls.field_names() - options)}; rename both sides together (config/requests.py)")
        return cls(**{name: given[name] for name in cls.field_names()})


@dataclass(frozen=True)
class TrainRequest(_Request):
    """pisa-train CONFIG [options]."""

    COMMAND_LINE_ONLY: ClassVar[frozenset[str]] = frozenset({
        "debug", "doctor", "list", "local_rank", "nproc", "nnodes", "node_rank", "master_addr", "master_port"})

    config: str
    data: str | None = None
    cfg_options: ConfigOverrides = ()
    cfg_add: ConfigOverrides = ()
    work_dir: str | None = None
    resume: str | None = None  # "auto": the newest checkpoint in the work dir
    amp: bool = False
    amp_dtype: str | None = None
    auto_scale_lr: bool = False
    seed: int | None = None
    max_iters: int | None = None
    tensorboard: bool = False
    vis_backend: tuple[str, ...] = ()  # experiment trackers (engine/trackers.py)
    patience: int | None = None  # validations without improvement before stopping
    load_from: str | None = None
    print_config: str | None = None  # "": the whole config; a key: the part under it
    device: str | None = None
    launcher: str = "none"
    ops_backend: str = "auto"
    trust_checkpoint: tuple[str, ...] = ()
    progress: bool = True


@dataclass(frozen=True)
class TestRequest(_Request):
    """pisa-eval CONFIG CHECKPOINT [options]."""

    __test__ = False  # a request, not a pytest test class
    COMMAND_LINE_ONLY: ClassVar[frozenset[str]] = frozenset({"debug", "local_rank"})

    config: str
    checkpoint: str
    out: str | None = None
    work_dir: str | None = None
    show_dir: str | None = None
    coco_backend: str = "faster-coco-eval"
    score_thr: float = 0.3
    worst_images: int = 8
    vis_backend: tuple[str, ...] = ()
    data: str | None = None
    cfg_options: ConfigOverrides = ()
    cfg_add: ConfigOverrides = ()
    print_config: str | None = None
    amp: bool = False
    amp_dtype: str | None = None
    device: str | None = None
    launcher: str = "none"
    ops_backend: str = "auto"
    trust_checkpoint: tuple[str, ...] = ()
    progress: bool = True


@dataclass(frozen=True)
class InferRequest(_Request):
    """pisa-infer CONFIG CHECKPOINT IMAGE_OR_DIR... --out DIR."""

    SEQUENCE_FIELDS: ClassVar[frozenset[str]] = _Request.SEQUENCE_FIELDS | {"inputs"}

    config: str
    checkpoint: str
    inputs: tuple[str, ...]
    out: str | None = None  # required on the command line; from Python, None writes no files
    score_thr: float = 0.3
    cfg_options: ConfigOverrides = ()
    cfg_add: ConfigOverrides = ()
    amp: bool = False
    amp_dtype: str | None = None
    device: str | None = None
    ops_backend: str = "auto"
    trust_checkpoint: tuple[str, ...] = ()
    progress: bool = True


@dataclass(frozen=True)
class ExportRequest(_Request):
    """pisa-export CONFIG CHECKPOINT --out FILE.onnx."""

    SEQUENCE_FIELDS: ClassVar[frozenset[str]] = _Request.SEQUENCE_FIELDS | {"size"}

    config: str
    checkpoint: str
    out: str
    size: tuple[int, ...] | None = None  # (width, height); None: the test pipeline's Resize scale
    dynamic: bool = False
    opset: int = 17
    data: str | None = None
    cfg_options: ConfigOverrides = ()
    cfg_add: ConfigOverrides = ()
    trust_checkpoint: tuple[str, ...] = ()
