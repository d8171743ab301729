"""Training curves of a work dir as a PNG: loss terms and learning rate per iteration,
bbox mAP per validation.

They are read from what MMEngine's LocalVisBackend writes, one JSON object a line,
in ``<work_dir>/<timestamp>/vis_data/scalars.json``: training lines carry ``loss*``,
``lr`` and ``step`` (the iteration); validation lines carry ``coco/bbox_mAP`` and
``step`` (the epoch, or the iteration for iteration-based runs). A resumed run
writes a new timestamped folder; its lines replace those of the same step in
earlier folders (the iterations redone after a resume), so the curves show the
run as it finally went. This is a picture of the logs, not a dashboard: for live
curves use ``pisa-train --tensorboard``.
"""
from __future__ import annotations

import json
from pathlib import Path

from pisa_train.errors import DataError

PLOT_FILE = "training_curves.png"
FIGURE_SIZE_INCHES, FIGURE_DPI = (15, 4.5), 100  # 1500 x 450 px, fixed: no tight bounding box


def scalars_files(work_dir: str | Path) -> list[Path]:
    """The scalars.json of every run in the work dir, oldest first (the folders are timestamps)."""
    return sorted(Path(work_dir).glob("*/vis_data/scalars.json"), key=lambda path: path.parent.parent.name)


def read_scalars(work_dir: str | Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """(training records by iteration, validation records by step); later runs win."""
    training: dict[int, dict] = {}
    validation: dict[int, dict] = {}
    for path in scalars_files(work_dir):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; the rest of the file is still good
            if not isinstance(record, dict) or "step" not in record:
                continue
            if any(key.startswith("loss") for key in record):
                training[int(record["step"])] = record
            elif any(key.startswith("coco/") for key in record):
                validation[int(record["step"])] = record
    return training, validation


def plot_training_curves(work_dir: str | Path, out_file: str | Path | None = None) -> Path:
    """Draw the curves of the runs in ``work_dir`` into ``out_file`` (default:
    ``<work_dir>/training_curves.png``); a DataError if the work dir has no logged iterations."""
    training, validation = read_scalars(work_dir)
    if not training:
        raise DataError(f"{work_dir} holds no training logs (no */vis_data/scalars.json with loss values); "
                        f"give the work dir of a pisa-train run that logged at least one iteration "
                        f"(default_hooks.logger.interval sets how often it logs)")
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is needed or wanted
    import matplotlib.pyplot as plt

    steps = sorted(training)
    figure, (loss_axes, lr_axes, map_axes) = plt.subplots(1, 3, figsize=FIGURE_SIZE_INCHES, dpi=FIGURE_DPI)
    loss_terms = sorted({key for record in training.values() for key in record if key.startswith("loss")},
                        key=lambda key: (key != "loss", key))
    for term in loss_terms:
        xs = [step for step in steps if term in training[step]]
        loss_axes.plot(xs, [training[step][term] for step in xs], label=term,
                       linewidth=2 if term == "loss" else 1)
    loss_axes.set(title="training loss", xlabel="iteration", ylabel="loss (smoothed over the log window)")
    loss_axes.legend(fontsize="small")
    lr_steps = [step for step in steps if "lr" in training[step]]
    lr_axes.plot(lr_steps, [training[step]["lr"] for step in lr_steps])
    lr_axes.set(title="learning rate", xlabel="iteration", ylabel="lr")
    by_epoch = any("epoch" in record for record in training.values())
    if validation:
        val_steps = sorted(validation)
        for key, label in (("coco/bbox_mAP", "mAP"), ("coco/bbox_mAP_50", "mAP@0.5"),
                           ("coco/bbox_mAP_75", "mAP@0.75")):
            xs = [step for step in val_steps if key in validation[step]]
            if xs:
                map_axes.plot(xs, [validation[step][key] for step in xs], marker="o", label=label)
        map_axes.legend(fontsize="small")
    else:
        map_axes.text(0.5, 0.5, "no validation in these runs", ha="center", transform=map_axes.transAxes)
    map_axes.set(title="validation bbox mAP", xlabel="epoch" if by_epoch else "iteration", ylabel="mAP")
    for axes in (loss_axes, lr_axes, map_axes):
        axes.grid(True, alpha=0.3)
    figure.tight_layout()
    out_file = Path(out_file) if out_file else Path(work_dir) / PLOT_FILE
    out_file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_file)
    plt.close(figure)
    return out_file


def draw_curves_of_run(work_dir: str | Path) -> str:
    """Draw the curves at the end of a run; the line that says where they are, or why there are none."""

    try:
        return f"training curves: {plot_training_curves(work_dir)} (redraw them with pisa-plot {work_dir})"
    except DataError as no_logs:  # a run shorter than the logging interval: nothing to draw, not a failure
        return f"no training curves drawn: {no_logs}"
