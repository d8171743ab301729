"""A detector as an ONNX graph: export it, check it against PyTorch, and run it on onnxruntime.

The graph's input contract (docs/export.md). The resize stays outside the graph: mmcv resizes with
OpenCV, whose bilinear kernel ONNX's Resize does not reproduce, so an in-graph resize would move
boxes by more than the tolerance the export is checked to. Everything after the resize is inside.

* ``image``: float32 [1, 3, H, W], the image as the config's test pipeline leaves it (loaded in
  BGR, resized to fit H x W keeping its aspect ratio), placed at the top left and padded to H x W
  with the normalisation mean (padding that normalises to the zeros mmdet pads with);
* ``image_shape``: float32 [2], the resized image's (height, width) before padding: boxes are
  clipped to it, as mmdet clips them;
* ``scale_factor``: float32 [2], the resize's (width, height) factors: boxes are divided by them.

Inside: BGR to RGB and normalisation (the data preprocessor's), the detector, its
post-processing (NMS, the score threshold, the detections per image). Outputs ``boxes`` float32
[N, 4] (x1, y1, x2, y2 in the original image's pixels), ``scores`` float32 [N] and ``labels``
int64 [N] (class indices), best first: what mmdet's ``predict`` returns.

H x W is fixed at export. A dynamic size is refused: mmdet's post-processing turns sizes and
counts into Python numbers, which the trace would freeze at the traced image's.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from mmcv.transforms import Compose
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import get_box_wh
from mmdet.utils import get_test_pipeline_cfg, register_all_modules
from mmengine.structures import InstanceData

from pisa_train.data.presence import dataset_classes
from pisa_train.engine.patches.mmdet_core_export import provide_mmdet_core_export
from pisa_train.engine.patches.multiclass_nms_for_onnxruntime import (
    NO_SPLIT,
    multiclass_nms_filtering_scores_while_exporting,
)
from pisa_train.errors import ConfigError, EnvironmentProblem, UsageError

INPUT_NAMES = ("image", "image_shape", "scale_factor")
OUTPUT_NAMES = ("boxes", "scores", "labels")
# What pisa-export checks before it writes a model (and the Done-when tests hold pisa-infer to).
BOX_TOLERANCE_PX = 1.0
SCORE_TOLERANCE = 1e-3
# torchvision's RoIAlign with ``aligned=True`` exports from opset 16 (ONNX RoiAlign's half_pixel mode);
# 20 is the newest torch 2.14's TorchScript exporter writes.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 16, 20, 17
INSTALL_HINT = "pip install 'pisa-train[export]' (or: pip install onnx onnxruntime)"
# Dense heads whose post-processing (mmdet 3.3's BaseDenseHead) traces to a graph that holds for any image.
DENSE_HEADS = ("RetinaHead", "PISARetinaHead")
# mmdet 3.3.0's SSDHead has no ``loss_cls``, which BaseDenseHead's post-processing reads: its inference fails
# in PyTorch already ("'PISASSDHead' object has no attribute 'loss_cls'"), so there is nothing to check against.
SSD_HEADS = ("SSDHead", "PISASSDHead")


def require_onnxruntime():
    """onnxruntime, or one line that says how to install it."""
    try:
        import onnxruntime  # noqa: PLC0415  (the optional extra `export`: missing, it is one line, not an ImportError)
    except ImportError:
        raise EnvironmentProblem(f"onnxruntime is not installed; {INSTALL_HINT}") from None
    return onnxruntime


def require_onnx():
    try:
        import onnx  # noqa: PLC0415  (the optional extra `export`, as above)
    except ImportError:
        raise EnvironmentProblem(f"onnx is not installed; {INSTALL_HINT}") from None
    return onnx


def refuse_unexportable_model(cfg) -> None:
    """One line for a model pisa-export cannot export, saying why."""
    model = cfg.model
    roi_head = model.get("roi_head") or {}
    if roi_head.get("mask_head"):
        raise ConfigError(f"{model.type} with a mask head ({roi_head.mask_head.type}) is not exported: the "
                          f"exported graph returns boxes only; export its Faster R-CNN twin "
                          f"(pisa_faster_rcnn_r50_fpn_1x_coco) or use pisa-infer with the .pth checkpoint")
    if roi_head:
        if roi_head.get("type") not in ("StandardRoIHead", "PISARoIHead"):
            raise ConfigError(f"RoI head {roi_head.get('type')} is not exported: pisa-export exports the "
                              f"StandardRoIHead and PISARoIHead of (PISA) Faster R-CNN")
        return
    head = (model.get("bbox_head") or {}).get("type")
    if head in SSD_HEADS:
        raise ConfigError(f"SSD ({head}) is not exported: mmdet 3.3.0's SSD head fails in its own inference "
                          f"('{head}' object has no attribute 'loss_cls'), so the export has nothing to be "
                          f"checked against; export (PISA) Faster R-CNN or RetinaNet")
    if head not in DENSE_HEADS:
        raise ConfigError(f"detector {model.type} with head {head} is not exported: pisa-export exports (PISA) "
                          f"Faster R-CNN and RetinaNet")


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset}: pisa-export writes opsets {MIN_OPSET} to {MAX_OPSET} (RoIAlign with "
                         f"aligned=True needs {MIN_OPSET}; torch's exporter writes up to {MAX_OPSET})")
    return opset


def pipeline_resize(cfg) -> dict | None:
    steps = cfg.test_dataloader.dataset.get("pipeline") or []
    return next((step for step in steps if step.get("type") in ("Resize", "mmdet.Resize")), None)


def export_size(cfg, size) -> tuple[int, int]:
    """(width, height) of the graph's input: ``--size``, else the test pipeline's Resize scale, rounded up
    to the data preprocessor's ``pad_size_divisor`` (what mmdet pads that image to)."""
    divisor = cfg.model.data_preprocessor.get("pad_size_divisor", 1) or 1
    if size is None:
        resize = pipeline_resize(cfg)
        if resize is None or not isinstance(resize.get("scale"), (tuple, list)):
            raise ConfigError("the config's test pipeline has no Resize with a scale (width, height); give --size W H")
        size = tuple(resize["scale"])
    width, height = (int(value) for value in size)
    if width <= 0 or height <= 0:
        raise UsageError(f"--size {width} {height}: width and height must be positive")
    return -(-width // divisor) * divisor, -(-height // divisor) * divisor


def test_pipeline(cfg, size: tuple[int, int], from_array: bool = False):
    """The config's test pipeline without its annotations, resizing to fit ``size`` (width, height);
    ``from_array``: loading an array of BGR pixels (a video frame), as mmdet's ``inference_detector`` does."""

    register_all_modules()  # the pipeline's names are mmdet's (pisa-infer on .onnx builds no mmdet model)
    steps = []
    for index, step in enumerate(get_test_pipeline_cfg(cfg.copy())):
        if step["type"] in ("LoadAnnotations", "mmdet.LoadAnnotations"):
            continue
        if index == 0 and from_array:
            step = {**step, "type": "mmdet.LoadImageFromNDArray"}
        if step["type"] in ("Resize", "mmdet.Resize"):
            step = {**step, "scale": size}
        steps.append(step)
    return Compose(steps)


@dataclass
class PreparedImage:
    image: np.ndarray  # float32 [1, 3, H, W]: resized, padded with the mean, not normalised
    image_shape: np.ndarray  # float32 [2]: (height, width) after the resize
    scale_factor: np.ndarray  # float32 [2]: (width, height) factors of the resize
    ori_shape: tuple[int, int]  # (height, width) of the file

    def feeds(self) -> dict:
        return dict(zip(INPUT_NAMES, (self.image, self.image_shape, self.scale_factor)))


class ImagePreparer:
    """Files to the graph's input: the config's test pipeline, then the padding of the input contract."""

    def __init__(self, cfg, size: tuple[int, int]):
        preprocessor = cfg.model.data_preprocessor
        self.size = size
        self.pipeline = test_pipeline(cfg, size)
        self.array_pipeline = test_pipeline(cfg, size, from_array=True)
        mean = np.asarray(preprocessor.get("mean") or [0.0, 0.0, 0.0], dtype=np.float32)
        # The mean is given in the order the model sees (RGB with bgr_to_rgb); the input is BGR.
        self.padding = mean[::-1] if preprocessor.get("bgr_to_rgb") else mean

    def __call__(self, image) -> PreparedImage:
        """``image``: a file's path, or an array of BGR pixels (a video frame)."""
        if isinstance(image, np.ndarray):
            data = self.array_pipeline({"img": image, "img_id": 0})
        else:
            data = self.pipeline({"img_path": str(image), "img_id": 0})
        resized = data["inputs"].numpy().astype(np.float32)
        meta = data["data_samples"].metainfo
        height, width = resized.shape[1:]
        canvas = np.empty((1, 3, self.size[1], self.size[0]), dtype=np.float32)
        canvas[0] = self.padding[:, None, None]
        canvas[0, :, :height, :width] = resized[:, :self.size[1], :self.size[0]]
        return PreparedImage(canvas, np.asarray(meta["img_shape"][:2], dtype=np.float32),
                             np.asarray(meta["scale_factor"], dtype=np.float32), tuple(meta["ori_shape"][:2]))


def reference_detections(model, prepared: PreparedImage):
    """What PyTorch (mmdet's own ``predict``, rescaled to the original image) detects on the same input."""

    data_preprocessor = model.data_preprocessor
    image = torch.from_numpy(prepared.image)
    if data_preprocessor._channel_conversion:
        image = image[:, [2, 1, 0], ...]
    image = (image - data_preprocessor.mean) / data_preprocessor.std
    height, width = image.shape[-2:]
    sample = DetDataSample(metainfo={
        "img_shape": tuple(int(v) for v in prepared.image_shape), "ori_shape": prepared.ori_shape,
        "scale_factor": tuple(float(v) for v in prepared.scale_factor),
        "pad_shape": (height, width), "batch_input_shape": (height, width)})
    with torch.no_grad():
        instances = model.predict(image, [sample], rescale=True)[0].pred_instances
    return instances.bboxes.numpy(), instances.scores.numpy(), instances.labels.numpy()


class DetectorForExport(torch.nn.Module):
    """The traced module: normalisation, the detector and its post-processing, one image."""

    def __init__(self, detector, size: tuple[int, int]):
        super().__init__()
        self.detector = detector
        self.size = size
        preprocessor = detector.data_preprocessor
        self.bgr_to_rgb = bool(preprocessor._channel_conversion)
        self.register_buffer("mean", preprocessor.mean.detach().clone().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", preprocessor.std.detach().clone().view(1, 3, 1, 1), persistent=False)
        head_cfg = detector.roi_head.test_cfg if hasattr(detector, "roi_head") else detector.bbox_head.test_cfg
        self.score_thr = float(head_cfg.get("score_thr", 0.0))

    def forward(self, image, image_shape, scale_factor):
        if self.bgr_to_rgb:
            image = image[:, [2, 1, 0], ...]
        image = (image - self.mean) / self.std
        width, height = self.size
        # image_shape is a tensor: mmdet's box coders then clip with it (mmdet_core_export.py), in the graph.
        meta = {"img_shape": image_shape, "ori_shape": (height, width), "scale_factor": (1.0, 1.0),
                "pad_shape": (height, width), "batch_input_shape": (height, width)}
        sample = DetDataSample(metainfo={key: value for key, value in meta.items() if key != "img_shape"})
        # Not through the metainfo argument, which deep-copies it: a copy of the input is a constant in the trace.
        sample.set_field(image_shape, "img_shape", field_type="metainfo")
        features = self.detector.extract_feat(image)
        if hasattr(self.detector, "roi_head"):
            instances = self._two_stage(features, sample, meta)
        else:
            instances = self.detector.bbox_head.predict(features, [sample], rescale=False)[0]
        keep = instances.scores > self.score_thr
        boxes = instances.bboxes[keep] * (1.0 / scale_factor).repeat(2)
        return boxes, instances.scores[keep], instances.labels[keep]

    def _two_stage(self, features, sample, meta):
        """StandardRoIHead.predict_bbox for one image, without its split of the R-CNN's outputs by image
        (a split by the traced image's proposal count, which the graph would freeze)."""
        roi_head = self.detector.roi_head
        proposals = self.detector.rpn_head.predict(features, [sample], rescale=False)[0].bboxes
        rois = torch.cat([proposals.new_zeros(proposals.shape[0], 1), proposals], dim=1)
        results = roi_head._bbox_forward(features, rois)
        return roi_head.bbox_head.predict_by_feat(
            rois=(rois,), cls_scores=(results["cls_score"],), bbox_preds=(results["bbox_pred"],),
            batch_img_metas=[meta], rcnn_test_cfg=roi_head.test_cfg, rescale=False)[0]


@contextlib.contextmanager
def _export_settings(detector):
    """The test settings of the trace (put back after). A dense head thresholds scores before its top-k,
    whose size the trace freezes at the count that passed on the traced image; with no threshold the
    count is the anchors', the same for every image of the size, and the graph thresholds at the end
    (NMS keeps the same boxes above the threshold: lower-scored boxes suppress none of them).
    ``split_thr`` out of reach: batched_nms then never loops over the classes present in the traced image."""
    provide_mmdet_core_export()
    heads = [getattr(detector, name) for name in ("rpn_head", "bbox_head") if hasattr(detector, name)]
    saved = [(head, head.test_cfg.copy()) for head in heads if head.test_cfg is not None]
    try:
        for head, _ in saved:
            if "score_thr" in head.test_cfg:
                head.test_cfg.score_thr = -1.0
            if "nms" in head.test_cfg:
                head.test_cfg.nms = {**head.test_cfg.nms, "split_thr": NO_SPLIT}
            head._bbox_post_process = _small_boxes_removed_first(head._bbox_post_process)
        with multiclass_nms_filtering_scores_while_exporting():
            yield
    finally:
        for head, test_cfg in saved:
            head.test_cfg = test_cfg
            vars(head).pop("_bbox_post_process", None)


def _small_boxes_removed_first(upstream):
    """The head's ``_bbox_post_process`` after an unconditional removal of boxes no larger than
    ``min_bbox_size``. Upstream removes them only ``if not valid_mask.all()``, a branch the trace freezes:
    traced on an image without such boxes, the graph would keep the boxes clipped to nothing in the
    padding of a smaller image. Upstream's own check then finds none (rescale is off in the graph, so
    removing them first changes nothing else)."""

    def post_process(results, cfg, **kwargs):
        if cfg.get("min_bbox_size", -1) >= 0:
            width, height = get_box_wh(results.bboxes)
            results = results[(width > cfg.min_bbox_size) & (height > cfg.min_bbox_size)]
        return upstream(results=results, cfg=cfg, **kwargs)

    return post_process


def export_detector(detector, size: tuple[int, int], sample: PreparedImage, out_path: str | Path, opset: int) -> None:
    """Trace ``detector`` on ``sample`` (torch's TorchScript-based exporter: the dynamo one fails in
    torch.export on mmdet's data-dependent branches) into ``out_path``."""
    module = DetectorForExport(detector, size).eval()
    inputs = tuple(torch.from_numpy(array) for array in (sample.image, sample.image_shape, sample.scale_factor))
    with _export_settings(detector), torch.no_grad(), warnings.catch_warnings():
        # The trace's warnings name mmdet's Python-number conversions, which _export_settings makes harmless.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(out_path), input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), opset_version=opset, dynamo=False,
                          dynamic_axes={name: {0: "detections"} for name in OUTPUT_NAMES})


def add_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Key-value pairs in the model file (ONNX's metadata_props): classes, size, what it was made from."""
    onnx = require_onnx()
    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


class OnnxDetector:
    """An exported model on onnxruntime (the CUDA provider where onnxruntime has one and ``device`` is cuda)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        onnxruntime = require_onnxruntime()
        if not os.path.isfile(path):
            raise UsageError(f"ONNX model {path} not found; write one with pisa-export CONFIG CHECKPOINT --out {path}")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are about graph optimisations
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own classes, one per failure kind
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UsageError(f"{path} is not an ONNX model onnxruntime can run ({first_line}); "
                             f"write one with pisa-export") from None
        inputs = {item.name: item for item in self.session.get_inputs()}
        if set(inputs) != set(INPUT_NAMES):
            raise UsageError(f"{path} takes inputs {sorted(inputs)}, not pisa-export's {list(INPUT_NAMES)}; "
                             f"export the model with pisa-export")
        height, width = inputs["image"].shape[2:]
        self.size = (int(width), int(height))
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.providers = self.session.get_providers()

    @property
    def classes(self) -> list[str]:
        return list(json.loads(self.metadata.get("classes", "[]")))

    def detect(self, prepared: PreparedImage):
        """(boxes [N, 4], scores [N], labels [N]) in the original image's pixels."""
        boxes, scores, labels = self.session.run(list(OUTPUT_NAMES), prepared.feeds())
        return boxes, scores, labels


def data_sample(boxes, scores, labels, prepared: PreparedImage, path):
    """mmdet's DetDataSample of one image's detections (what pisa-infer draws and writes)."""

    sample = DetDataSample(metainfo={"img_path": str(path), "ori_shape": prepared.ori_shape,
                                     "img_shape": tuple(int(v) for v in prepared.image_shape),
                                     "scale_factor": tuple(float(v) for v in prepared.scale_factor)})
    sample.pred_instances = InstanceData(bboxes=torch.from_numpy(np.asarray(boxes, np.float32)).reshape(-1, 4),
                                         scores=torch.from_numpy(np.asarray(scores, np.float32)).reshape(-1),
                                         labels=torch.from_numpy(np.asarray(labels, np.int64)).reshape(-1))
    return sample


@dataclass
class Disagreement:
    """The largest differences between two detectors' outputs over some images."""

    count_mismatches: list[str]
    max_box_px: float = 0.0
    max_score: float = 0.0
    label_mismatches: int = 0
    compared: int = 0

    @property
    def within_tolerance(self) -> bool:
        return (not self.count_mismatches and not self.label_mismatches
                and self.max_box_px <= BOX_TOLERANCE_PX and self.max_score <= SCORE_TOLERANCE)

    def describe(self) -> str:
        counts = "; ".join(self.count_mismatches[:3]) or "equal counts"
        return (f"{self.compared} detections compared: largest box difference {self.max_box_px:.3g} px "
                f"(tolerance {BOX_TOLERANCE_PX:g}), largest score difference {self.max_score:.3g} "
                f"(tolerance {SCORE_TOLERANCE:g}), {self.label_mismatches} labels differ, {counts}")


def detections_per_image(detector) -> int | None:
    """The most detections the model returns per image (its test_cfg's ``max_per_img``)."""
    head_cfg = detector.roi_head.test_cfg if hasattr(detector, "roi_head") else detector.bbox_head.test_cfg
    return head_cfg.get("max_per_img")


def certain_detections(scores, min_score: float, max_per_img: int | None):
    """The indices of the detections that must be in both outputs: scoring at least ``min_score`` and, in
    a list cut at ``max_per_img``, more than the score tolerance above its last score (at the cut, two
    detections whose scores differ by less than the tolerance may fall on either side of it)."""
    floor = min_score
    if max_per_img and len(scores) >= max_per_img:
        floor = max(floor, float(np.min(scores)) + SCORE_TOLERANCE + 1e-9)
    return np.flatnonzero(scores >= floor)


def compare_detections(pairs, min_score: float = 0.0, max_per_img: int | None = None) -> Disagreement:
    """``pairs``: (name, (boxes, scores, labels) of A, of B) per image. Each certain detection of either
    (``certain_detections``) is matched to the nearest one of the other with its label, not by rank:
    detections whose scores differ by less than the tolerance may come in either order."""
    result = Disagreement([])
    for name, first, second in pairs:
        counts = [len(certain_detections(scores, min_score, max_per_img)) for _, scores, _ in (first, second)]
        if not (max_per_img and max(len(first[1]), len(second[1])) >= max_per_img) and counts[0] != counts[1]:
            result.count_mismatches.append(f"{name}: {counts[0]} detections against {counts[1]}")
            continue
        for (boxes, scores, labels), (other_boxes, other_scores, other_labels) in ((first, second), (second, first)):
            for index in certain_detections(scores, min_score, max_per_img):
                same_label = np.flatnonzero(other_labels == labels[index])
                if len(same_label) == 0:
                    result.label_mismatches += 1
                    continue
                distances = np.abs(other_boxes[same_label] - boxes[index]).max(axis=1)
                nearest = same_label[int(np.argmin(distances))]
                result.compared += 1
                result.max_box_px = max(result.max_box_px, float(distances.min()))
                result.max_score = max(result.max_score, abs(float(scores[index]) - float(other_scores[nearest])))
    result.compared //= 2  # each certain detection was looked up from both sides
    return result


def write_check_images(folder: str | Path, size: tuple[int, int], count: int = 3, seed: int = 0) -> list[Path]:
    """Generated images for the check without --data: coloured boxes and discs on noise, at the export size
    and at other aspect ratios (which are padded, so that the check covers the clipping to image_shape)."""

    rng = np.random.default_rng(seed)
    width, height = size
    shapes = [(width, height), (width, max(height // 2, 8)), (max(width // 2, 8), height)]
    paths = []
    for index in range(count):
        w, h = shapes[index % len(shapes)]
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for _ in range(4):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            x, y = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
            side = int(rng.integers(max(min(w, h) // 8, 2), max(min(w, h) // 3, 3)))
            if rng.random() < 0.5:
                cv2.rectangle(image, (x, y), (x + side, y + side), colour, -1)
            else:
                cv2.circle(image, (x + side // 2, y + side // 2), side // 2, colour, -1)
        path = Path(folder) / f"check_{index}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def onnxruntime_detection(cfg, path: str | Path, device: str):
    """pisa-infer's detection on an exported model: (``detect``: an image's path or BGR array -> mmdet's
    DetDataSample, as ``inference_detector`` returns it; the class names: the model's, else the config's;
    the onnxruntime providers it runs on)."""
    detector = OnnxDetector(path, device)
    prepare = ImagePreparer(cfg, detector.size)

    def detect(image):
        prepared = prepare(image)
        return data_sample(*detector.detect(prepared), prepared, image if not isinstance(image, np.ndarray) else "")

    classes = detector.classes or dataset_classes(cfg, "test_dataloader") or []
    return detect, classes, detector.providers
