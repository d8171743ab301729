"""pisa_train.train/evaluate/infer: the commands' requests and code, called from Python; errors raised
as pisa-train's own exceptions with their exit codes; and docs/notebook.ipynb run by nbclient in a
real Jupyter kernel."""
from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pytest
from conftest import DEMO_CONFIG, REPO_ROOT
from nbclient import NotebookClient
from tiny_training import ADDED, DATA_OPTIONS, MODEL_OPTIONS, TEST_OPTIONS, TRAIN_OPTIONS

import pisa_train
from pisa_train import api
from pisa_train.cli import train as train_cli
from pisa_train.config.build import build_train_config
from pisa_train.config.requests import InferRequest, TestRequest, TrainRequest
from pisa_train.errors import ConfigError, UnknownOptionError, UsageError


def test_import_pisa_train_imports_neither_torch_nor_the_api_until_it_is_used():
    code = ("import sys, pisa_train; assert 'pisa_train.api' not in sys.modules; pisa_train.train; "
            "assert 'torch' not in sys.modules and 'mmengine' not in sys.modules; print(pisa_train.train.__module__)")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "pisa_train.api"


def test_the_keywords_are_the_commands_options():
    assert api.OPTIONS[api.train] == sorted(TrainRequest.field_names() - {"config", "print_config"})
    assert api.OPTIONS[api.evaluate] == sorted(TestRequest.field_names() - {"config", "checkpoint", "print_config"})
    assert api.OPTIONS[api.infer] == sorted(InferRequest.field_names() - {"config", "checkpoint", "inputs"})
    assert {"data", "work_dir", "max_iters", "device", "cfg_options", "load_from", "amp"} <= set(api.OPTIONS[api.train])


def test_an_unknown_keyword_is_refused_with_the_option_meant():
    with pytest.raises(UnknownOptionError) as caught:
        pisa_train.train(DEMO_CONFIG, max_iter=2)
    assert str(caught.value) == ("pisa_train.train() got an unknown option max_iter=2; did you mean max_iters=? "
                                 "(the options of pisa-train, with _ for -)")
    assert caught.value.exit_code == 2 and isinstance(caught.value, TypeError)
    with pytest.raises(UnknownOptionError, match=r"^pisa_train.infer\(\) got an unknown option outdir='o'; "
                                                 r"did you mean out=\?"):
        pisa_train.infer(DEMO_CONFIG, "w.pth", "images/", outdir="o")
    with pytest.raises(UnknownOptionError, match=r"takes no print_config=: --print-config prints the config"):
        pisa_train.evaluate(DEMO_CONFIG, "w.pth", print_config="")


def test_a_value_the_command_line_would_refuse_is_refused_as_argparse_refuses_it():
    with pytest.raises(UsageError) as caught:
        pisa_train.train(DEMO_CONFIG, device="gpu")
    assert (str(caught.value), caught.value.exit_code) == ("device='gpu' is not one of cpu, cuda", 2)
    with pytest.raises(UsageError, match=r"^max_iters='3': --max-iters takes an integer$"):
        pisa_train.train(DEMO_CONFIG, max_iters="3")
    with pytest.raises(UsageError, match=r"^score_thr='0.5': --score-thr takes a number$"):
        pisa_train.infer(DEMO_CONFIG, "w.pth", "images/", score_thr="0.5")


def test_a_missing_config_raises_the_commands_error_with_exit_code_3_and_no_system_exit(capsys):
    with pytest.raises(ConfigError) as caught:  # a SystemExit would not be caught here, and fail the test
        pisa_train.train("configs/no_such_config.py", device="cpu")
    assert caught.value.exit_code == 3
    assert train_cli.main(["configs/no_such_config.py", "--device", "cpu"]) == 3
    assert capsys.readouterr().err == f"pisa-train: error: {caught.value}\n"  # the line the command prints


def test_cfg_options_as_a_mapping_build_the_config_the_command_line_builds(tmp_path):
    from_python = TrainRequest(str(DEMO_CONFIG), work_dir=str(tmp_path), max_iters=3, cfg_options={
        "train_dataloader.batch_size": 3, "model.roi_head.bbox_head.num_classes": 3, "randomness.seed": None})
    from_command_line = train_cli.parse_request([
        str(DEMO_CONFIG), "--work-dir", str(tmp_path), "--max-iters", "3", "--cfg-options",
        "train_dataloader.batch_size=3", "model.roi_head.bbox_head.num_classes=3", "randomness.seed=None"])
    assert (build_train_config(from_python, "cpu").cfg.to_dict()
            == build_train_config(from_command_line, "cpu").cfg.to_dict())


def test_training_result_reads_the_best_checkpoint_from_run_json_when_there_is_one(tmp_path):
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_4.pth"))
    assert api.training_result(tmp_path) == api.TrainingResult(str(tmp_path), str(tmp_path / "iter_4.pth"), None, {})
    (tmp_path / "run.json").write_text(json.dumps({"runs": [{"best_checkpoint": {
        "file": "best_coco_bbox_mAP_epoch_2.pth", "path": str(tmp_path / "best_coco_bbox_mAP_epoch_2.pth")}}]}))
    scalars = tmp_path / "20261206_000000" / "vis_data" / "scalars.json"
    scalars.parent.mkdir(parents=True)
    scalars.write_text("\n".join(json.dumps(record) for record in (
        {"loss": 1.0, "lr": 0.02, "step": 1}, {"coco/bbox_mAP": 0.1, "step": 1},
        {"coco/bbox_mAP": 0.25, "coco/bbox_mAP_50": 0.5, "data_time": 0.1, "step": 2})))
    result = api.training_result(tmp_path)
    assert result.best_checkpoint == str(tmp_path / "best_coco_bbox_mAP_epoch_2.pth")
    assert result.metrics == {"coco/bbox_mAP": 0.25, "coco/bbox_mAP_50": 0.5}


SCRIPT = """
import json, sys
import pisa_train
from pisa_train.errors import PisaError

config, train_options, test_options = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
result = pisa_train.train(config, work_dir="work", max_iters=1, **train_options)
metrics = pisa_train.evaluate(config, result.last_checkpoint, work_dir="work/evaluation", **test_options)
images = pisa_train.infer(config, result.last_checkpoint, ["data/demo_shapes/val"], **test_options)
try:
    pisa_train.evaluate(config, "work/no_such_checkpoint.pth", **test_options)
except PisaError as error:
    refused = [type(error).__name__, error.exit_code]
print(json.dumps({"last": result.last_checkpoint, "ap": metrics["bbox"]["AP"], "images": len(images),
                  "keys": sorted(images[0]), "refused": refused}))
"""


@pytest.mark.slow
def test_train_evaluate_and_infer_from_a_script(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    train_options = dict(device="cpu", cfg_options=DATA_OPTIONS + MODEL_OPTIONS + TRAIN_OPTIONS, cfg_add=ADDED)
    test_options = dict(device="cpu", cfg_options=DATA_OPTIONS + MODEL_OPTIONS + TEST_OPTIONS,
                        cfg_add=["model.backbone.base_channels=16"])
    completed = subprocess.run([sys.executable, str(script), str(DEMO_CONFIG), json.dumps(train_options),
                                json.dumps(test_options)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    checked = json.loads(completed.stdout.strip().splitlines()[-1])
    assert checked["last"] == str(tmp_path / "work" / "iter_1.pth")
    assert 0 <= checked["ap"] <= 1 and checked["images"] == 2
    assert checked["keys"] == ["detections", "file_name", "height", "id", "width"]  # no out=: nothing drawn
    assert checked["refused"] == ["CheckpointError", 5]
    assert not (tmp_path / "work" / "evaluation" / "detections.json").exists()
    assert "[pisa-eval] metrics written to" in completed.stdout  # the commands' own lines


def _tiny_settings() -> str:
    """The notebook's settings cell, for tests/tiny_training.py's model (seconds per iteration, not minutes)."""
    return (f"TRAIN_OPTIONS = dict(max_iters=2, device='cpu', "
            f"cfg_options={DATA_OPTIONS + MODEL_OPTIONS + TRAIN_OPTIONS!r}, cfg_add={ADDED!r})\n"
            f"TEST_OPTIONS = dict(device='cpu', cfg_options={DATA_OPTIONS + MODEL_OPTIONS + TEST_OPTIONS!r}, "
            f"cfg_add=['model.backbone.base_channels=16'])\n")


@pytest.mark.slow
def test_the_notebook_trains_evaluates_and_infers_in_a_jupyter_kernel(tmp_path):
    notebook = nbformat.read(REPO_ROOT / "docs" / "notebook.ipynb", as_version=4)
    settings = next(index for index, cell in enumerate(notebook.cells)
                    if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(settings + 1, nbformat.v4.new_code_cell(_tiny_settings()))
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import dataclasses, json\n"
        "print(json.dumps({'result': dataclasses.asdict(result), 'images': images,\n"
        "                  'metrics_are_out': metrics == json.load(open(f'{WORK_DIR}/evaluation/metrics.json'))}))"))
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    def output_of(cell, stream="stdout") -> str:
        return "".join(output.get("text", "") for output in cell.outputs
                       if output.output_type == "stream" and output.name == stream)

    checked = json.loads(output_of(notebook.cells[-1]))
    work_dir = "work_dirs/notebook_demo"
    assert checked["result"] == {"work_dir": work_dir, "last_checkpoint": f"{tmp_path}/{work_dir}/iter_2.pth",
                                 "best_checkpoint": None, "metrics": {}}  # --max-iters: no validation
    assert (tmp_path / work_dir / "iter_2.pth").is_file()
    assert checked["metrics_are_out"] is True
    images = checked["images"]
    assert len(images) == 2 and {"file_name", "width", "height", "detections", "drawn"} <= set(images[0])
    assert (images[0]["width"], images[0]["height"]) == (64, 64)
    assert json.loads((tmp_path / work_dir / "detections" / "detections.json").read_text())["images"] == images
    training = next(cell for cell in notebook.cells if "pisa_train.train(CONFIG" in cell.source)
    assert "[pisa-train] done; checkpoints and logs are in" in output_of(training)
    progress = output_of(training, "stderr")  # tqdm's text bar ("{bar}| {desc}"): ipywidgets is not installed here
    assert "| train " in progress and "2/2 100%" in progress, progress[-2000:]
    error = next(cell for cell in notebook.cells if "no_such_config" in cell.source)
    assert output_of(error).startswith("ConfigError 3 config file configs/no_such_config.py not found; ")
