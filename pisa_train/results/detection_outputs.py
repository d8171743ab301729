"""What pisa-infer writes into ``--out``: each image drawn, each video drawn as a video of the same frame
rate, and ``detections.json`` with one entry per image or video frame.

``detections.json`` is rewritten atomically as the run goes (files.py: a reader never sees half a file)
and once more at the end or at a stop (Ctrl-C), so an interrupted run leaves a valid file for the
pictures done, with ``"complete": false``. A fresh run into an ``--out`` that holds an earlier run's
results first removes what that run listed in its detections.json (its drawn images and videos, and
the file itself; nothing else, and nothing outside ``--out``), so the two never mix.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from pisa_train.data.media import media_unit, picture_count, pictures
from pisa_train.files import write_json_atomically
from pisa_train.results.figure_text import literal_text
from pisa_train.results.predictions import detections_of, draw_predictions, prediction_visualizer
from pisa_train.terminal import ProgressReporter

DETECTIONS_FILE = "detections.json"
REWRITE_SECONDS = 2.0  # how often detections.json is rewritten while the run goes


def remove_earlier_results(out_dir: Path) -> int:
    """Remove an earlier run's detections.json and the files it lists in ``out_dir``; how many files."""
    index = out_dir / DETECTIONS_FILE
    try:
        earlier = json.loads(index.read_text())
    except (OSError, ValueError):
        earlier = None
    if not isinstance(earlier, dict):
        return 0
    listed = {entry.get("drawn") for entry in earlier.get("images") or [] if isinstance(entry, dict)}
    listed |= {entry.get("drawn") for entry in earlier.get("videos") or [] if isinstance(entry, dict)}
    removed, root = 0, out_dir.resolve()
    for name in filter(None, listed):
        path = Path(name)
        try:
            inside = path.resolve().parent == root or root in path.resolve().parents
        except (OSError, RuntimeError):
            continue
        if inside and path.is_file():
            path.unlink()
            removed += 1
    index.unlink()
    return removed + 1


class DetectionOutputs:
    """Collects pisa-infer's entries (returned by ``records``) and, with an ``out_dir``, draws and writes them."""

    def __init__(self, out_dir: str | Path | None, header: dict, classes, score_thr: float):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.header = header
        self.score_thr = score_thr
        self.records: list[dict] = []
        self.videos: dict[str, dict] = {}  # per input video: its entry of "videos"
        self._writers: dict[str, object] = {}
        self._names: dict[str, int] = {}
        self._written_at = time.monotonic()
        self.visualizer, self.removed_earlier = None, 0
        if self.out_dir is not None:
            self.removed_earlier = remove_earlier_results(self.out_dir) if self.out_dir.is_dir() else 0
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.visualizer = prediction_visualizer(classes)

    def _output_name(self, file_name: str, suffix: str | None = None) -> str:
        """The input's name (a video's with ``suffix``), numbered when two inputs share one."""
        path = Path(file_name)
        name = path.stem + (suffix or path.suffix)
        count = self._names.get(name, 0)
        self._names[name] = count + 1
        return name if count == 0 else f"{path.stem}_{count}{suffix or path.suffix}"

    def add(self, picture, result) -> dict:
        """One image or frame (data/media.py's Picture) and mmdet's result for it; its entry."""
        image_id = len(self.records)
        height, width = result.ori_shape
        record = {"id": image_id, "file_name": picture.file_name, "width": int(width), "height": int(height)}
        if picture.video is not None:
            record["frame"] = picture.frame
        if self.out_dir is not None:
            record["drawn"] = self._draw(picture, result)
        record["detections"] = detections_of(result, image_id, self.score_thr)
        self.records.append(record)
        if self.out_dir is not None and time.monotonic() - self._written_at >= REWRITE_SECONDS:
            self.write(complete=False)
        return record

    def _draw(self, picture, result) -> str:
        if picture.video is None:
            path = self.out_dir / self._output_name(picture.file_name)
            draw_predictions(self.visualizer, picture.image, result, path, self.score_thr)
            return str(path)
        return self._draw_frame(picture, result)

    @literal_text  # class names as written, not as matplotlib maths
    def _draw_frame(self, picture, result) -> str:
        import cv2

        video = self.videos.get(picture.file_name)
        if video is None:
            path = self.out_dir / self._output_name(picture.file_name, ".mp4")
            # mp4v: the MPEG-4 codec every OpenCV build writes (H.264 needs an encoder OpenCV's wheels lack).
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), picture.video.fps,
                                     (picture.video.width, picture.video.height))
            video = {"file_name": picture.file_name, "fps": picture.video.fps, "drawn": str(path), "frames": 0}
            self.videos[picture.file_name], self._writers[picture.file_name] = video, writer
        # mmdet keeps boxes scoring above the threshold; ours is "at least", as --score-thr says.
        self.visualizer.add_datasample("frame", cv2.cvtColor(picture.image, cv2.COLOR_BGR2RGB), result,
                                       draw_gt=False, pred_score_thr=self.score_thr - 1e-9)
        self._writers[picture.file_name].write(cv2.cvtColor(self.visualizer.get_image(), cv2.COLOR_RGB2BGR))
        video["frames"] += 1
        return video["drawn"]

    def write(self, complete: bool) -> None:
        """detections.json as it stands, atomically."""
        if self.out_dir is None:
            return
        write_json_atomically(self.out_dir / DETECTIONS_FILE, {
            **self.header, "complete": complete, "images_done": len(self.records),
            **({"videos": list(self.videos.values())} if self.videos else {}), "images": self.records}, indent=1)
        self._written_at = time.monotonic()

    def close(self, complete: bool = True) -> None:
        """Finish the videos (an interrupted one stays playable up to its last frame) and write detections.json."""
        for writer in self._writers.values():
            writer.release()
        self._writers.clear()
        self.write(complete)



def detect_and_write(detect, media, out, header: dict, classes, score_thr: float, label: str, progress_bar: bool,
                     say) -> list[dict]:
    """Every image and video frame of ``media`` (data/media.py) through ``detect`` (an image file's path or a
    frame's array -> mmdet's DetDataSample), drawn and written into ``out`` as it goes; the entries. A stop
    (Ctrl-C) or a failure leaves detections.json for the pictures done, and says how many."""
    outputs = DetectionOutputs(out, header, classes, score_thr)
    if outputs.removed_earlier:
        say(f"removed an earlier run's detections.json and drawings from {out} ({outputs.removed_earlier} files)")
    total, unit = picture_count(media), media_unit(media)
    # Redrawn in place on a terminal; plain lines every tenth of the way in logs (no \r, no escape codes).
    progress = ProgressReporter(f"{label} {unit}", total or None, unit=unit.split()[-1],
                                interactive=None if progress_bar else False)
    # mmdet 3.3's inference_detector switches the model's test pipeline to arrays for good once it is given
    # one (a video frame): image files after a video are then read into arrays here, not by the pipeline.
    arrays = False
    try:
        for picture in pictures(media):
            arrays = arrays or picture.video is not None
            image = picture.image if not isinstance(picture.image, Path) else \
                _read_bgr(picture.image) if arrays else str(picture.image)
            outputs.add(picture, detect(image))
            progress.update(len(outputs.records))
    except BaseException:
        progress.finish()
        outputs.close(complete=False)
        if out is not None:
            say(f"stopped after {len(outputs.records)} of {total} {unit}; {Path(out) / DETECTIONS_FILE} "
                f"holds those {len(outputs.records)}")
        raise
    progress.finish()
    outputs.close(complete=True)
    return outputs.records


def _read_bgr(path: Path):
    import mmcv

    return mmcv.imread(str(path))
