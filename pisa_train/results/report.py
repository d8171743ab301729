"""One page per run, ``WORK_DIR/report.html``: what was trained, how it went, what the model gets wrong.

It is one self-contained file (every image embedded as a data URI, the style inline, no script), so
it can be mailed or copied off a cluster and opened in any browser. It gathers what the commands left
in the work dir: ``run.json`` (pisa-train: the run's description and times), the training curves
(training_curves.py), and ``evaluation.json`` (pisa-eval: the metrics, per-class AP, and the files
evaluation_analysis.py wrote). pisa-train writes it at the end of a run, pisa-eval after evaluating,
and ``pisa-plot WORK_DIR --report`` at any time; parts that are not there yet say which command makes them.
"""
from __future__ import annotations

import base64
import datetime
import html
import json
import time
from pathlib import Path

from pisa_train.files import write_json_atomically, write_text_atomically

REPORT_FILE = "report.html"
RUN_RECORD = "run.json"
# The page runs no script and loads nothing: images are data URIs, the style is inline. The browser
# enforces it, so a value that escaped escaping still could not run or fetch anything.
CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
                           "form-action 'none'")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1rem 1.5rem 3rem; color: #1d2430; background: #fff; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem;
       border-bottom: 1px solid #dde3ea; padding-bottom: 0.3rem; }
.subtitle { color: #5a6675; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #dde3ea; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f6f9; }
img { max-width: 100%; height: auto; border: 1px solid #e4e9ef; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 0.8rem; }
.grid figure { margin: 0; } figcaption { font-size: 0.85rem; color: #5a6675; }
.missing { color: #8a5a00; background: #fff7e6; padding: 0.4rem 0.7rem; border-left: 3px solid #f0b400; }
nav a { margin-right: 0.9rem; font-size: 0.9rem; }
"""


def record_training_start(work_dir: str | Path, description: list[str], started: float, start: dict) -> Path:
    """Add this start of pisa-train to ``run.json`` before its first iteration, so that a run stopped by a
    signal or a crash is listed too: its description lines (as pisa-train logged them), its time, and
    ``start`` (engine/hooks/run_record.py): the checkpoint it resumed from and the iteration and epoch it
    continues at. Each start, resumed or not, is one entry of ``runs``."""
    path = Path(work_dir) / RUN_RECORD
    record = _read_json(path) or {"runs": []}
    record["runs"].append({"description": description, "started": _iso(started), "finished": None,
                           "resumed_from": start.get("resumed_from"), "start_iteration": start.get("iteration"),
                           "start_epoch": start.get("epoch")})
    write_json_atomically(path, record)
    return path


def record_training_run(work_dir: str | Path, description: list[str], started: float, finished: float,
                        outcome: dict | None = None) -> Path:
    """Complete this run's entry in ``run.json`` (added at its start; added now if it has none): its end,
    the last checkpoint, and ``outcome`` (engine/runner.py's ``training_outcome``: the best checkpoint,
    an early stop)."""
    path = Path(work_dir) / RUN_RECORD
    record = _read_json(path) or {"runs": []}
    entry = next((run for run in reversed(record["runs"]) if run.get("started") == _iso(started)), None)
    if entry is None:
        entry = {"description": description, "started": _iso(started)}
        record["runs"].append(entry)
    last_checkpoint = Path(work_dir) / "last_checkpoint"
    entry.update({"finished": _iso(finished), "duration_s": round(finished - started, 1),
                  "last_checkpoint": last_checkpoint.read_text().strip() if last_checkpoint.is_file() else None,
                  **(outcome or {})})
    write_json_atomically(path, record)
    return path


def report_training_run(work_dir: str | Path, description: list[str], started: float,
                        outcome: dict | None = None) -> Path:
    """At the end of pisa-train: the run recorded in run.json, and the report written."""
    record_training_run(work_dir, description, started, time.time(), outcome)
    return write_report(work_dir)


def start_recorder(work_dir: str | Path, description: list[str], started: float):
    """The callback engine/runner.py's ``run_training`` calls once the run's checkpoint is loaded."""
    return lambda start: record_training_start(work_dir, description, started, start)


def outcome_lines(outcome: dict) -> list[str]:
    """The early stop and the best checkpoint of a finished run, for the end of pisa-train's output."""
    lines = [outcome["stopped_early"]] if outcome.get("stopped_early") else []
    if outcome.get("best_checkpoint"):
        lines.append(f"best checkpoint: {describe_best_checkpoint(outcome['best_checkpoint'])}")
    return lines


def describe_best_checkpoint(best: dict) -> str:
    """``best_coco_bbox_mAP_epoch_3.pth (epoch 3, coco/bbox_mAP 0.412)``, for the log and the report."""
    when = ", ".join(f"{unit} {best[unit]}" for unit in ("epoch", "iter") if best.get(unit) is not None)
    score = best.get("score")
    scored = f"{best.get('metric') or 'score'} {score:.3f}" if isinstance(score, (int, float)) else ""
    details = ", ".join(part for part in (when.replace("iter ", "iteration "), scored) if part)
    return f"{best.get('file')} ({details})" if details else str(best.get("file"))


def _describe_start(run: dict) -> str:
    if not run.get("resumed_from"):
        return "a new run" if run.get("start_iteration") in (0, None) else f"iteration {run['start_iteration']}"
    where = f" at iteration {run['start_iteration']}" if run.get("start_iteration") is not None else ""
    epoch = f" (epoch {run['start_epoch']})" if run.get("start_epoch") else ""
    return f"resumed from {run['resumed_from']}{where}{epoch}"


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _image(path: Path, alt: str, roots: tuple[Path, ...]) -> str:
    """``path`` embedded as a data URI, if it is a PNG or JPEG inside one of ``roots`` (the work dir, and the
    folder pisa-eval has just written its analyses to) after following links; otherwise a note saying why
    it is not: a record may name any path (``/etc/passwd``, ``../../``)."""
    problem = _not_embeddable(path, roots)
    if problem:
        return _missing(f"{path} not embedded: {problem}")
    data = path.read_bytes()
    kind = "jpeg" if data.startswith(JPEG_SIGNATURE) else "png"
    return (f'<img src="data:image/{kind};base64,{base64.b64encode(data).decode("ascii")}" alt="{html.escape(alt)}" '
            f'loading="lazy">')


def _not_embeddable(path: Path, roots: tuple[Path, ...]) -> str | None:
    """Why ``path`` may not go into the page, or None: only PNG and JPEG files inside ``roots`` do."""
    try:
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root.resolve()) for root in roots):
            return f"it is outside the work dir {roots[0]}" + "".join(f" and {root}" for root in roots[1:])
        if not resolved.is_file():
            return "not found"
        with open(resolved, "rb") as file:
            head = file.read(len(PNG_SIGNATURE))
    except (OSError, RuntimeError, ValueError) as error:  # a loop of links, a name with a NUL
        return f"cannot be read ({type(error).__name__})"
    if not head.startswith((PNG_SIGNATURE, JPEG_SIGNATURE)):
        return "not a PNG or JPEG image"
    return None


def _missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


def _table(header: list[str] | None, rows: list[list], numeric_from: int = 1) -> str:
    """A table; without ``header``, a list of names (first column, as headers) and values."""
    if header is None:
        body = "".join(f"<tr><th>{html.escape(_cell(name))}</th><td>{html.escape(_cell(value))}</td></tr>"
                       for name, value in rows)
        return f"<table><tbody>{body}</tbody></table>"
    head = "".join(f'<th class="{"number" if i >= numeric_from else ""}">{html.escape(str(h))}</th>'
                   for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"number" if i >= numeric_from else ""}">{html.escape(_cell(v))}</td>'
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _figures(items: list[tuple[Path, str]], roots: tuple[Path, ...]) -> str:
    """A grid of the images of ``items`` that may be embedded, and a note naming the others."""
    shown, refused = [], []
    for path, caption in items:
        problem = _not_embeddable(path, roots)
        if problem:
            refused.append(f"{path} ({problem})")
        else:
            shown.append(f"<figure>{_image(path, caption, roots)}<figcaption>{html.escape(caption)}"
                         f"</figcaption></figure>")
    note = _missing(f"not embedded: {'; '.join(refused)}") if refused else ""
    return '<div class="grid">' + "".join(shown) + "</div>" + note


def _training_section(work_dir: Path) -> str:
    record = _read_json(work_dir / RUN_RECORD)
    parts = ['<h2 id="training">What was trained</h2>']
    if not record or not record.get("runs"):
        parts.append(_missing(f"no run recorded in {work_dir}: pisa-train writes run.json at the end of a run"))
    runs = (record or {}).get("runs", [])
    if len(runs) > 1:  # every start, stopped or finished, with where it began
        parts.append("<h3>starts</h3>" + _table(["start", "started", "from", "finished"], [
            [number, run.get("started"), _describe_start(run),
             run.get("finished") or "did not finish (stopped or failed; the next start resumes)"]
            for number, run in enumerate(runs, start=1)], numeric_from=99))
    for number, run in enumerate(runs, start=1):
        rows = [[line.split(":", 1)[0], line.split(":", 1)[1].strip() if ":" in line else ""]
                for line in run["description"]
                if not (line.startswith("resuming from") and "resumed_from" in run)]  # named below instead
        if "resumed_from" in run:
            rows.append(["start", _describe_start(run)])
        rows += [["started", run["started"]], ["finished", run.get("finished") or "did not finish"]]
        if run.get("duration_s") is not None:
            rows.append(["duration", str(datetime.timedelta(seconds=round(run["duration_s"])))])
        rows.append(["last checkpoint", run.get("last_checkpoint") or "none"])
        if isinstance(run.get("best_checkpoint"), dict):
            rows.append(["best checkpoint", describe_best_checkpoint(run["best_checkpoint"])])
        if run.get("stopped_early"):
            rows.append(["stopped early", run["stopped_early"]])
        if len(runs) > 1:
            parts.append(f"<h3>run {number} of {len(runs)}</h3>")
        parts.append(_table(None, rows))
    curves = work_dir / "training_curves.png"
    parts.append('<h2 id="curves">Training curves</h2>')
    parts.append(_image(curves, "training curves", (work_dir,)) if curves.is_file()
                 else _missing("no training curves: pisa-train draws them at the end of a run (pisa-plot WORK_DIR)"))
    return "\n".join(parts)


def _analysis_folder(analysis: dict, work_dir: Path) -> tuple[Path, str]:
    """Where the files that evaluation.json names are: its ``analysis_dir`` if that is inside the work
    dir, else the work dir itself (where pisa-eval puts them, and where they are after the work dir was
    copied elsewhere); and a note when ``analysis_dir`` was set aside."""
    recorded = analysis.get("analysis_dir")
    if not recorded:
        return work_dir, ""
    folder = Path(str(recorded))
    try:
        if folder.resolve().is_relative_to(work_dir.resolve()):
            return folder, ""
    except (OSError, RuntimeError, ValueError):  # a loop of links, a name with a NUL
        pass
    return work_dir, _missing(f"evaluation.json's analysis_dir {recorded} is outside the work dir: its files are "
                              f"looked for in {work_dir} instead, and only files inside it are embedded")


def _evaluation_sections(work_dir: Path, analysis_dir: Path | None) -> str:
    evaluation = _read_json(work_dir / "evaluation.json")
    if not evaluation:
        if (work_dir / "evaluation.json").exists():
            return ('<h2 id="evaluation">Evaluation</h2>' + _missing(
                f"{work_dir / 'evaluation.json'} is not readable JSON; run pisa-eval again to rewrite it"))
        return ('<h2 id="evaluation">Evaluation</h2>' + _missing(
            f"not evaluated yet: run pisa-eval CONFIG CHECKPOINT --work-dir {work_dir}"))
    if not isinstance(evaluation, dict):
        return '<h2 id="evaluation">Evaluation</h2>' + _malformed("evaluation.json", TypeError())
    analysis = evaluation.get("analysis") or {}
    analysis = analysis if isinstance(analysis, dict) else {}
    # The folder pisa-eval names as it writes the page is trusted as much as the work dir: it comes from its
    # command line, not from a file. A folder named only in evaluation.json is not.
    folder, folder_note = (analysis_dir, "") if analysis_dir else _analysis_folder(analysis, work_dir)
    roots = (work_dir, analysis_dir) if analysis_dir else (work_dir,)

    def metrics() -> str:
        parts = [f'<p>checkpoint {html.escape(str(evaluation.get("checkpoint")))}, COCO metrics by '
                 f'{html.escape(str(evaluation.get("coco_backend")))}</p>']
        for iou_type in ("bbox", "segm"):
            if evaluation.get(iou_type):
                summary = evaluation[iou_type]
                parts.append(f"<h3>{iou_type}</h3>" + _table(list(summary), [list(summary.values())], numeric_from=0))
        for key, title in (("per_class", "AP per class"), ("per_class_segm", "mask AP per class")):
            if evaluation.get(key):
                parts.append(f"<h3>{title}</h3>" + _table(["class", "AP", "AP50", "AP75"], [
                    [name, row.get("AP"), row.get("AP50"), row.get("AP75")] for name, row in evaluation[key].items()]))
        return "\n".join(parts) + folder_note

    def pr_curves() -> str:
        curves = analysis.get("pr_curves")
        return _figures([(folder / path, Path(path).stem.replace("pr_curve_", "")) for path in curves], roots) \
            if curves else _missing("no precision-recall curves in this evaluation")

    def confusion() -> str:
        if not analysis.get("confusion_matrix"):
            return ""
        return (f"<p>IoU 0.5, detections scoring at least {html.escape(str(analysis.get('score_thr')))}; rows: "
                f"ground truth, columns: prediction; background: missed boxes (column) and false detections "
                f"(row).</p>" + _figures([(folder / "confusion_matrix.png", "counts"),
                                          (folder / "confusion_matrix_normalised.png", "rows normalised")], roots))

    def errors() -> str:
        if not analysis.get("gain_if_fixed"):
            return ""
        return ("<p>COCO's analyze(): how much AP (IoU 0.5 levels upward) fixing each kind of error adds.</p>"
                + _table(["error", "AP gained if fixed"], [[name, gain] for name, gain in
                                                           analysis["gain_if_fixed"].items()])
                + _figures([(folder / "error_breakdown.png", "precision-recall at each level")], roots))

    def worst_images() -> str:
        worst = [entry for entry in analysis.get("worst_images", []) if entry.get("drawn")]
        return _figures([(folder / e["drawn"], f"{e['file_name']}: {e['missed']} missed, {e['false']} false "
                                               f"(ground truth left, predictions right)") for e in worst], roots) \
            if worst else _missing("no image with missed or false boxes (or no images found to draw)")

    def samples() -> str:
        drawn = analysis.get("sample_predictions", [])
        return _figures([(folder / path, Path(path).name) for path in drawn], roots) if drawn \
            else _missing("no sample predictions drawn")

    sections = (("evaluation", "Evaluation", metrics), ("pr-curves", "Precision-recall curves", pr_curves),
                ("confusion", "Confusion matrix", confusion), ("errors", "Error breakdown", errors),
                ("worst", "Worst images", worst_images), ("samples", "Sample predictions", samples))
    return "\n".join(f'<h2 id="{anchor}">{title}</h2>' + _guarded("evaluation.json", render)
                     for anchor, title, render in sections)


# What a record written by hand (or by an older or newer version) can raise when read as ours.
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)


def _guarded(record: str, render) -> str:
    """``render()``, or a note that the part of ``record`` it reads is malformed: one bad record
    costs its section, never the page (and never a traceback)."""
    try:
        return render()
    except MALFORMED as error:
        return _malformed(record, error)


def _malformed(record: str, error: BaseException) -> str:
    return _missing(f"skipped: this part of {record} is malformed ({type(error).__name__}); the command that "
                    f"writes it (pisa-train for run.json, pisa-eval for evaluation.json) rewrites it")


def write_report(work_dir: str | Path, analysis_dir: str | Path | None = None) -> Path:
    """``WORK_DIR/report.html`` from what is in the work dir now; ``analysis_dir``: where pisa-eval, writing the
    page, has just put its analyses (beside ``--out``), whose images may be embedded too."""
    work_dir = Path(work_dir)
    analysis_dir = Path(analysis_dir) if analysis_dir is not None else None
    name = work_dir.resolve().name
    sections = _guarded("run.json", lambda: _training_section(work_dir)) + "\n" + _evaluation_sections(work_dir, analysis_dir)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>pisa-train report: {html.escape(name)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>pisa-train report: {html.escape(name)}</h1>
<p class="subtitle">{html.escape(str(work_dir.resolve()))}, written {_iso(datetime.datetime.now().timestamp())}</p>
<nav><a href="#training">run</a><a href="#curves">curves</a><a href="#evaluation">metrics</a>
<a href="#pr-curves">PR curves</a><a href="#confusion">confusion</a><a href="#errors">errors</a>
<a href="#worst">worst images</a><a href="#samples">samples</a></nav>
{sections}
</body>
</html>
"""
    path = work_dir / REPORT_FILE
    write_text_atomically(path, page)
    return path
