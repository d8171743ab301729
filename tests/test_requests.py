"""The typed hand-off: each command line fills its request (config/requests.py) through one mapping,
and a flag renamed on one side only fails here, not as a silent default in a run."""
from __future__ import annotations

import argparse
import dataclasses
import importlib

import pytest
from conftest import REPO_ROOT

from pisa_train.cli import evaluate as eval_cli
from pisa_train.cli import infer as infer_cli
from pisa_train.cli import train as train_cli
from pisa_train.config.requests import InferRequest, TestRequest, TrainRequest

# Every console command whose main() hands on a request (it has parse_request, from cli/running.py).
CLI_MODULES = [importlib.import_module(f"pisa_train.cli.{path.stem}")
               for path in sorted((REPO_ROOT / "pisa_train" / "cli").glob("*.py"))]
COMMANDS = [(module, module.parse_request.request_class) for module in CLI_MODULES if hasattr(module, "parse_request")]


def test_the_three_commands_of_issue_21_hand_on_requests():
    assert {(cli, request_class) for cli, request_class in COMMANDS} >= {
        (train_cli, TrainRequest), (eval_cli, TestRequest), (infer_cli, InferRequest)}


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's options and positionals by destination, as argparse's Namespace names them."""
    return {action.dest: action for action in parser._actions if action.dest != argparse.SUPPRESS
            and not isinstance(action, argparse._HelpAction)}


@pytest.mark.parametrize("cli, request_class", COMMANDS, ids=lambda value: getattr(value, "PROG", ""))
def test_every_option_of_a_command_is_a_field_of_its_request_and_the_other_way_round(cli, request_class):
    options = set(_options(cli.build_parser())) - request_class.COMMAND_LINE_ONLY
    fields = request_class.field_names()
    assert sorted(options - fields) == [], f"options of {cli.PROG} without a field in {request_class.__name__}"
    assert sorted(fields - options) == [], f"fields of {request_class.__name__} without an option of {cli.PROG}"
    assert request_class.COMMAND_LINE_ONLY <= set(_options(cli.build_parser())), "a stale COMMAND_LINE_ONLY name"


@pytest.mark.parametrize("cli, request_class", COMMANDS, ids=lambda value: getattr(value, "PROG", ""))
def test_a_requests_defaults_are_its_command_lines(cli, request_class):
    """pisa_train.train(config) and `pisa-train CONFIG` ask for the same run."""
    options = _options(cli.build_parser())
    for field in dataclasses.fields(request_class):
        if field.default is dataclasses.MISSING:
            assert options[field.name].required or options[field.name].nargs in ("+", "?"), field.name
            continue
        default = options[field.name].default
        assert field.default == (tuple(default) if isinstance(default, list) else default), field.name


def test_a_renamed_flag_fails_the_mapping_at_once():
    """What a rename on one side only does: the request refuses the command line it no longer fits."""
    parser = train_cli.build_parser()
    renamed = vars(parser.parse_args(["c.py"]))
    renamed["max_iterations"] = renamed.pop("max_iters")
    with pytest.raises(RuntimeError, match=r"options without a field: \['max_iterations'\], "
                                           r"fields without an option: \['max_iters'\]"):
        TrainRequest.from_namespace(argparse.Namespace(**renamed))


def test_the_command_line_fills_the_request_it_says():
    request = train_cli.parse_request(["c.py", "--max-iters", "4", "--cfg-options", "a=1", "b=2",
                                       "--trust-checkpoint", "x.pth", "--no-progress", "--device", "cpu"])
    assert request == TrainRequest("c.py", max_iters=4, cfg_options=("a=1", "b=2"), trust_checkpoint=("x.pth",),
                                   progress=False, device="cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.max_iters = 5  # type: ignore[misc]
    assert infer_cli.parse_request(["c.py", "w.pth", "a.jpg", "b/", "--out", "o"]).inputs == ("a.jpg", "b/")
    assert TestRequest("c.py", "w.pth", cfg_options={"a.b": 1}).cfg_options == {"a.b": 1}
