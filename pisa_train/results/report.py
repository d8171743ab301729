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
from pathlib import Path

from pisa_train.files import write_json_atomically, write_text_atomically

REPORT_FILE = "report.html"
RUN_RECORD = "run.json"

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


def record_training_run(work_dir: str | Path, description: list[str], started: float, finished: float) -> Path:
    """Add this run (its description lines, as pisa-train logged them, and its times) to ``run.json``;
    a resumed run adds a second entry."""
    path = Path(work_dir) / RUN_RECORD
    record = _read_json(path) or {"runs": []}
    last_checkpoint = Path(work_dir) / "last_checkpoint"
    record["runs"].append({
        "description": description,
        "started": _iso(started), "finished": _iso(finished), "duration_s": round(finished - started, 1),
        "last_checkpoint": last_checkpoint.read_text().strip() if last_checkpoint.is_file() else None})
    write_json_atomically(path, record)
    return path


def report_training_run(work_dir: str | Path, description: list[str], started: float) -> Path:
    """At the end of pisa-train: the run recorded in run.json, and the report written."""
    import time

    record_training_run(work_dir, description, started, time.time())
    return write_report(work_dir)


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    kind = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
    return f'<img src="data:image/{kind};base64,{data}" alt="{html.escape(alt)}" loading="lazy">'


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


def _figures(items: list[tuple[Path, str]]) -> str:
    return '<div class="grid">' + "".join(f"<figure>{_image(path, caption)}<figcaption>{html.escape(caption)}"
                                          f"</figcaption></figure>" for path, caption in items if path.is_file()) \
        + "</div>"


def _training_section(work_dir: Path) -> str:
    record = _read_json(work_dir / RUN_RECORD)
    parts = ['<h2 id="training">What was trained</h2>']
    if not record or not record.get("runs"):
        parts.append(_missing(f"no run recorded in {work_dir}: pisa-train writes run.json at the end of a run"))
    for number, run in enumerate((record or {}).get("runs", []), start=1):
        rows = [[line.split(":", 1)[0], line.split(":", 1)[1].strip() if ":" in line else ""]
                for line in run["description"]]
        rows += [["started", run["started"]], ["finished", run["finished"]],
                 ["duration", str(datetime.timedelta(seconds=round(run["duration_s"])))],
                 ["last checkpoint", run.get("last_checkpoint") or "none"]]
        if len(record["runs"]) > 1:
            parts.append(f"<h3>run {number} of {len(record['runs'])}</h3>")
        parts.append(_table(None, rows))
    curves = work_dir / "training_curves.png"
    parts.append('<h2 id="curves">Training curves</h2>')
    parts.append(_image(curves, "training curves") if curves.is_file()
                 else _missing("no training curves: pisa-train draws them at the end of a run (pisa-plot WORK_DIR)"))
    return "\n".join(parts)


def _evaluation_sections(work_dir: Path) -> str:
    evaluation = _read_json(work_dir / "evaluation.json")
    if not evaluation:
        return ('<h2 id="evaluation">Evaluation</h2>' + _missing(
            f"not evaluated yet: run pisa-eval CONFIG CHECKPOINT --work-dir {work_dir}"))
    analysis = evaluation.get("analysis") or {}
    folder = Path(analysis.get("analysis_dir") or work_dir)
    parts = ['<h2 id="evaluation">Evaluation</h2>',
             f'<p>checkpoint {html.escape(str(evaluation.get("checkpoint")))}, COCO metrics by '
             f'{html.escape(str(evaluation.get("coco_backend")))}</p>']
    for iou_type in ("bbox", "segm"):
        if evaluation.get(iou_type):
            summary = evaluation[iou_type]
            parts.append(f"<h3>{iou_type}</h3>" + _table(list(summary), [list(summary.values())], numeric_from=0))
    for key, title in (("per_class", "AP per class"), ("per_class_segm", "mask AP per class")):
        if evaluation.get(key):
            parts.append(f"<h3>{title}</h3>" + _table(["class", "AP", "AP50", "AP75"], [
                [name, row.get("AP"), row.get("AP50"), row.get("AP75")] for name, row in evaluation[key].items()]))
    parts.append('<h2 id="pr-curves">Precision-recall curves</h2>')
    parts.append(_figures([(folder / path, Path(path).stem.replace("pr_curve_", "")) for path in analysis.get(
        "pr_curves", [])]) if analysis.get("pr_curves") else _missing("no precision-recall curves in this evaluation"))
    parts.append('<h2 id="confusion">Confusion matrix</h2>')
    if analysis.get("confusion_matrix"):
        parts.append(f"<p>IoU 0.5, detections scoring at least {analysis.get('score_thr')}; rows: ground truth, "
                     f"columns: prediction; background: missed boxes (column) and false detections (row).</p>")
        parts.append(_figures([(folder / "confusion_matrix.png", "counts"),
                               (folder / "confusion_matrix_normalised.png", "rows normalised")]))
    parts.append('<h2 id="errors">Error breakdown</h2>')
    if analysis.get("gain_if_fixed"):
        parts.append("<p>COCO's analyze(): how much AP (IoU 0.5 levels upward) fixing each kind of error adds.</p>")
        parts.append(_table(["error", "AP gained if fixed"], [[name, gain] for name, gain in
                                                              analysis["gain_if_fixed"].items()]))
        parts.append(_figures([(folder / "error_breakdown.png", "precision-recall at each level")]))
    parts.append('<h2 id="worst">Worst images</h2>')
    worst = [entry for entry in analysis.get("worst_images", []) if entry.get("drawn")]
    parts.append(_figures([(folder / e["drawn"], f"{e['file_name']}: {e['missed']} missed, {e['false']} false "
                                                 f"(ground truth left, predictions right)") for e in worst])
                 if worst else _missing("no image with missed or false boxes (or no images found to draw)"))
    parts.append('<h2 id="samples">Sample predictions</h2>')
    samples = analysis.get("sample_predictions", [])
    parts.append(_figures([(folder / path, Path(path).name) for path in samples]) if samples
                 else _missing("no sample predictions drawn"))
    return "\n".join(parts)


def write_report(work_dir: str | Path) -> Path:
    """``WORK_DIR/report.html`` from what is in the work dir now."""
    work_dir = Path(work_dir)
    name = work_dir.resolve().name
    sections = _training_section(work_dir) + "\n" + _evaluation_sections(work_dir)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
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
