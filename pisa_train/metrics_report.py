"""The COCO bbox metrics of an evaluation as a table and as JSON."""
from __future__ import annotations

import json
import os
from pathlib import Path

# The names people quote in papers, in COCOeval's stats order, with MMDetection's CocoMetric keys.
COCO_BBOX_METRICS = (
    ("AP", "coco/bbox_mAP"),
    ("AP50", "coco/bbox_mAP_50"),
    ("AP75", "coco/bbox_mAP_75"),
    ("APs", "coco/bbox_mAP_s"),
    ("APm", "coco/bbox_mAP_m"),
    ("APl", "coco/bbox_mAP_l"),
)


def summary_from_stats(stats) -> dict:
    """The six numbers from COCOeval's ``stats`` (its first six entries), rounded to 3
    decimals as mmdet's CocoMetric reports them; -1 (no objects of that size) stays -1."""
    return {name: round(float(stats[index]), 3) for index, (name, _) in enumerate(COCO_BBOX_METRICS)}


def format_metrics_table(summary: dict) -> str:
    names = list(summary)
    widths = [max(len(n), 6) for n in names]
    header = " | ".join(n.rjust(w) for n, w in zip(names, widths))
    rule = "-+-".join("-" * w for w in widths)
    values = " | ".join(f"{summary[n]:.3f}".rjust(w) for n, w in zip(names, widths))
    return f"COCO bbox metrics\n{header}\n{rule}\n{values}"


def write_metrics_json(path: str, summary: dict, **context) -> None:
    """Write atomically, so that a reader never sees half a file. ``context`` adds keys
    beside "bbox" (the config, the checkpoint, "per_class")."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps({"bbox": summary, **context}, indent=2) + "\n")
    os.replace(temporary, target)
