"""Text from data never acts on the reader (issue 20, points 2, 3 and 8): report.html escapes every value and
embeds only images inside the work dir, under a Content-Security-Policy that allows no script; the terminal gets
control characters escaped the way repr shows them (terminal.shown, in terminal.write_line and
error_reporting); matplotlib draws class names as written, not as maths. Real commands on crafted files."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pytest
from conftest import DEMO_CONFIG
from headless_chromium import open_in_chromium
from local_http_server import LocalHTTPServer
from PIL import Image
from tiny_coco import coco_dict, make_coco2017
from tiny_training import MODEL_OPTIONS, tiny_demo, tiny_eval

from pisa_train import exit_codes
from pisa_train.results.figure_text import literal_text
from pisa_train.results.report import write_report
from pisa_train.terminal import CLEAR_LINE, ProgressReporter, TerminalLine, shown

# A class name that would set the window title (OSC 0), write the clipboard (OSC 52), show a link (OSC 8),
# then move the cursor up, erase that line and return to its start, and print a line that looks like ours,
# if a terminal got it raw.
HOSTILE = ("evil\x1b]0;owned\x07\x1b]52;c;cHduZWQ=\x07\x1b]8;;http://127.0.0.1/x\x1b\\link\x1b]8;;\x1b\\"
           "\x1b[1A\x1b[2K\r\n[pisa-train] done")
HOSTILE_SHOWN = ("evil\\x1b]0;owned\\x07\\x1b]52;c;cHduZWQ=\\x07\\x1b]8;;http://127.0.0.1/x\\x1b\\link\\x1b]8;;"
                 "\\x1b\\\\x1b[1A\\x1b[2K\\r\\n[pisa-train] done")
MATHS = "price $\\foo$"  # matplotlib reads $...$ as maths, and \foo is no maths: ValueError
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # any control character but the newline


def no_control_characters(text: str) -> bool:
    return CONTROL.search(text) is None


def hostile_dataset(root: Path) -> Path:
    return make_coco2017(root, coco_dict(categories=[{"id": 1, "name": HOSTILE, "supercategory": "x"},
                                                     {"id": 2, "name": MATHS, "supercategory": "x"}]))


def run(module: str, args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pisa_train.cli.{module}", *map(str, args)], cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, capture_output=True,
                          text=True, timeout=900)


# --- the terminal ------------------------------------------------------------------------------------------


def test_shown_escapes_control_characters_as_repr_does_and_leaves_the_rest():
    assert shown(HOSTILE) == HOSTILE_SHOWN
    assert shown("chat, 猫 and café") == "chat, 猫 and café"
    assert shown("a\nb") == "a\\nb" and shown("a\nb", keep_newlines=True) == "a\nb"
    assert shown("right-to-left \u202e override, C1 \x9b") == "right-to-left \\u202e override, C1 \\x9b"


def test_the_progress_line_escapes_its_text_and_keeps_its_own_codes():
    stream = io.StringIO()
    line = TerminalLine(stream, columns=lambda: 400)
    line.show(f"checking {HOSTILE}: 50%")
    line.close(f"done {HOSTILE}")
    assert stream.getvalue() == f"{CLEAR_LINE}checking {HOSTILE_SHOWN}: 50%{CLEAR_LINE}done {HOSTILE_SHOWN}\n"
    stream = io.StringIO()
    reporter = ProgressReporter(f"extracting {HOSTILE}", 2, unit="files", stream=stream, interactive=False)
    reporter.update(2)
    reporter.finish()
    assert no_control_characters(stream.getvalue()) and HOSTILE_SHOWN in stream.getvalue()


def test_pisa_data_check_shows_class_names_escaped_and_draws_them_as_written(tmp_path):
    hostile_dataset(tmp_path / "data")
    result = run("data", ["check", "data", "--plots", "plots"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert no_control_characters(result.stdout + result.stderr), (result.stdout + result.stderr)[-3000:]
    lines = result.stdout.splitlines()
    assert [line.startswith(f"{HOSTILE_SHOWN}  ") for line in lines if line.startswith(("evil", "price"))] == [
        True, False]
    assert not [line for line in lines if line.startswith("[pisa-train] done")]  # the newline did not start a line
    assert f"{MATHS}  " in result.stdout
    for name in ("labels.png", "train_images.jpg", "label_statistics.json"):
        assert (tmp_path / "plots" / name).stat().st_size > 0, name


def test_data_notes_show_class_names_escaped_one_line_each(tmp_path):
    hostile_dataset(tmp_path / "data")
    result = run("train", [DEMO_CONFIG, "--data", "data", "--device", "cpu", "--print-config"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert no_control_characters(result.stdout + result.stderr)
    assert f"[pisa-train]   classes (2): {HOSTILE_SHOWN}, {MATHS}\n" in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("[pisa-train] done")]


def test_an_error_naming_data_stays_one_line_with_its_control_characters_escaped(tmp_path):
    result = run("train", [DEMO_CONFIG, "--data", "nowhere\r\x1b[2Kdata", "--device", "cpu"], tmp_path)
    assert result.returncode == exit_codes.DATA_ERROR
    assert result.stderr == ("pisa-train: error: dataset folder nowhere\\r\\x1b[2Kdata not found; download one with "
                             "`pisa-data download coco2017 --dest nowhere\\r\\x1b[2Kdata` or `pisa-data download URL "
                             "--dest nowhere\\r\\x1b[2Kdata`\n")


def test_archive_entry_names_are_shown_escaped(tmp_path):
    export = hostile_dataset(tmp_path / "export")
    folder = "export\x1b]0;owned\x07\x1b[2K"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(export.rglob("*")):
            if path.is_file():
                archive.writestr(f"{folder}/{path.relative_to(export).as_posix()}", path.read_bytes())
    with LocalHTTPServer(files={"/export.zip": buffer.getvalue()}) as server:
        result = run("data", ["download", server.url("/export.zip"), "--dest", "dest", "--no-progress"], tmp_path)
    output = result.stdout + result.stderr
    assert no_control_characters(output), output[-3000:]
    assert "export\\x1b]0;owned\\x07\\x1b[2K" in output, output[-3000:]


def test_upstream_matplotlib_still_reads_dollars_as_maths_and_literal_text_draws_them_as_written(tmp_path):
    """matplotlib 3.x parses text between two $ as mathtext; if it stops, results/figure_text.py can go."""
    matplotlib.use("Agg")

    def draw(path: Path) -> None:
        figure, axes = plt.subplots()
        axes.set_title(MATHS)
        figure.savefig(path)
        plt.close(figure)

    with pytest.raises(ValueError, match="foo"):
        draw(tmp_path / "maths.png")
    plt.close("all")
    literal_text(draw)(tmp_path / "literal.png")
    assert (tmp_path / "literal.png").stat().st_size > 0
    assert matplotlib.rcParams["text.parse_math"] is True  # the setting is the caller's again


# --- report.html ---------------------------------------------------------------------------------------------

PASSWD_START = "root:"
PASSWD_START_BASE64 = "cm9vdDp4OjA6"  # "root:x:0:", the first line of /etc/passwd, in a data URI


def crafted_work_dir(work_dir: Path) -> Path:
    """A work dir holding the records an attacker would write: markup in every value, files outside."""
    (work_dir / "pr_curves").mkdir(parents=True)
    (work_dir / "pr_curves" / "pr_curve_link.png").symlink_to("/etc/passwd")
    (work_dir / "pr_curves" / "pr_curve_text.png").write_text("<script>alert(4)</script>")
    (work_dir / "evaluation.json").write_text(json.dumps({
        "checkpoint": "<script>alert(1)</script>", "coco_backend": "<img src=x onerror=alert(2)>",
        "bbox": {"AP<script>": 0.5}, "per_class": {"<b onmouseover=alert(5)>cat": {"AP": 0.1}},
        "analysis": {"analysis_dir": "/", "score_thr": "<script>alert(3)</script>", "confusion_matrix": ["x"],
                     "pr_curves": ["/etc/passwd", "etc/passwd", "../../../../../../etc/passwd",
                                   "pr_curves/pr_curve_link.png", "pr_curves/pr_curve_text.png"],
                     "worst_images": [{"drawn": "/etc/passwd"}, "not a record"],
                     "sample_predictions": 7}}))
    return work_dir


def assert_the_page_is_inert(page: str) -> None:
    assert "<script" not in page and re.search(r"<[^>]*\son[a-z]+=", page) is None  # no tag with a handler
    assert PASSWD_START not in page and PASSWD_START_BASE64 not in page  # /etc/passwd neither as text nor embedded
    assert all(source.startswith("data:image/") for source in re.findall(r'<img src="([^"]*)"', page))
    assert ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            'style-src \'unsafe-inline\'; base-uri \'none\'; form-action \'none\'">') in page
    assert "checkpoint &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "scoring at least &lt;script&gt;alert(3)&lt;/script&gt;" in page
    assert "&lt;b onmouseover=alert(5)&gt;cat" in page


def test_pisa_plot_report_of_a_crafted_evaluation_escapes_everything_and_embeds_nothing_from_outside(tmp_path):
    work_dir = crafted_work_dir(tmp_path / "work")
    (work_dir / "run.json").write_text(json.dumps({"runs": [5]}))
    result = run("plot", [work_dir, "--report"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == f"[pisa-plot] report written to {work_dir / 'report.html'}"
    page = (work_dir / "report.html").read_text()
    assert_the_page_is_inert(page)
    assert "<img " not in page  # every image the records name is refused
    assert (f"evaluation.json&#x27;s analysis_dir / is outside the work dir: its files are looked for in {work_dir} "
            f"instead, and only files inside it are embedded") in page
    assert (f"not embedded: /etc/passwd (it is outside the work dir {work_dir}); {work_dir}/etc/passwd (not found); "
            f"{work_dir}/../../../../../../etc/passwd (it is outside the work dir {work_dir}); "
            f"{work_dir}/pr_curves/pr_curve_link.png (it is outside the work dir {work_dir}); "
            f"{work_dir}/pr_curves/pr_curve_text.png (not a PNG or JPEG image)") in page
    malformed = ("skipped: this part of {} is malformed ({}); the command that writes it (pisa-train for run.json, "
                 "pisa-eval for evaluation.json) rewrites it")
    assert malformed.format("run.json", "TypeError") in page
    assert malformed.format("evaluation.json", "AttributeError") in page  # the worst image that is no record
    assert malformed.format("evaluation.json", "TypeError") in page  # sample_predictions: 7


def test_the_crafted_report_runs_nothing_in_headless_chromium(tmp_path):
    work_dir = crafted_work_dir(tmp_path / "work")
    result = open_in_chromium(write_report(work_dir), tmp_path / "report.png")
    assert result["images"] == []
    assert result["console"] == [], result["console"]  # no script ran, and the policy had nothing to block


def test_a_malformed_evaluation_json_is_a_note_not_a_traceback(tmp_path):
    for content in ("[1, 2]", '{"analysis": {"pr_curves": [null, 3]}, "bbox": [1]}', "{not json",
                    '{"analysis": {"analysis_dir": "a\\u0000b", "worst_images": [{"drawn": "x\\u0000"}]}}'):
        (tmp_path / "evaluation.json").write_text(content)
        page = write_report(tmp_path).read_text()
        assert "malformed" in page or "not readable JSON" in page, content


@pytest.mark.slow
def test_train_eval_and_infer_on_hostile_class_names(tmp_path):
    """The end-of-run report of pisa-train reads a crafted evaluation.json safely; pisa-eval's table and plots
    and pisa-infer's classes (from the checkpoint's meta) come out escaped and drawn, with no crash."""
    hostile_dataset(tmp_path / "data")
    work_dir = crafted_work_dir(tmp_path / "work")
    trained = run("train", tiny_demo(work_dir, 1, "--data", "data"), tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert no_control_characters(trained.stdout + trained.stderr)
    assert_the_page_is_inert((work_dir / "report.html").read_text())

    evaluated = run("evaluate", tiny_eval(work_dir / "iter_1.pth", work_dir, "--data", "data"), tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert no_control_characters(evaluated.stdout + evaluated.stderr), evaluated.stderr[-3000:]
    table = [line for line in evaluated.stdout.splitlines() if line.startswith((HOSTILE_SHOWN, MATHS))]
    assert [line.split(" |")[0].rstrip() for line in table] == [HOSTILE_SHOWN, MATHS]
    assert len({line.index("|") for line in table}) == 1  # escaped before padding: the columns line up
    assert len(list((work_dir / "pr_curves").glob("pr_curve_price*.png"))) == 1
    assert (work_dir / "confusion_matrix.png").stat().st_size > 0
    page = (work_dir / "report.html").read_text()
    assert f"{MATHS}" in page and "&lt;script&gt;" not in page  # pisa-eval's own record replaced the crafted one

    shutil.rmtree(work_dir / "pr_curves")
    inferred = run("infer", [DEMO_CONFIG, work_dir / "iter_1.pth", "data/val2017", "--out", "drawn", "--device",
                             "cpu", "--score-thr", "0", "--cfg-options", *MODEL_OPTIONS,
                             "model.roi_head.bbox_head.num_classes=2", "--cfg-add", "model.backbone.base_channels=16"],
                   tmp_path)
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    assert no_control_characters(inferred.stdout + inferred.stderr), inferred.stderr[-3000:]
    assert f"[pisa-infer] detecting {HOSTILE_SHOWN}, {MATHS} in 2 images on cpu" in inferred.stdout
    assert len(list((tmp_path / "drawn").glob("*.jpg"))) == 2


def test_pisa_eval_embeds_the_analyses_it_wrote_beside_out_but_a_record_alone_cannot_name_that_folder(tmp_path):
    work_dir, beside_out = tmp_path / "work", tmp_path / "results"
    (beside_out / "pr_curves").mkdir(parents=True)
    work_dir.mkdir()
    Image.new("RGB", (8, 8)).save(beside_out / "pr_curves" / "pr_curve_cat.png")
    (work_dir / "evaluation.json").write_text(json.dumps({"analysis": {
        "analysis_dir": str(beside_out), "pr_curves": ["pr_curves/pr_curve_cat.png"]}}))
    # pisa-eval writing the page: the folder comes from its own --out, so its images are embedded
    assert len(re.findall(r'<img src="data:image/png;base64,', write_report(work_dir, beside_out).read_text())) == 1
    # pisa-plot --report (or a crafted record): the same folder named only in evaluation.json is set aside
    page = write_report(work_dir).read_text()
    assert "<img " not in page
    assert (f"evaluation.json&#x27;s analysis_dir {beside_out} is outside the work dir: its files are looked for in "
            f"{work_dir} instead") in page
