"""Run a trained detector on image files: load it (weights-only), detect, draw, and
describe the detections in COCO's result format.

The model is built by mmdet's ``init_detector`` without a checkpoint, and the
checkpoint is loaded here through safe_checkpoint_loading (``torch.load`` with
``weights_only=True``) and checked against the model with checkpoint_compatibility,
as pisa-eval does: mmdet's own loading would accept weights of another shape with
a warning and detect nonsense.
"""
from __future__ import annotations

from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Distinct colours for class 0, 1, 2, ... (tab10), as RGB.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def find_images(inputs) -> list[Path]:
    """Image files named on the command line, and the images in the folders named there
    (not recursive), in order; a DataError for a path that does not exist or holds no image."""
    from pisa_train.errors import DataError

    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise DataError(f"folder {item} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                f"give image files or a folder of images")
            images.extend(found)
        elif item.is_file():
            images.append(item)
        else:
            raise DataError(f"image or folder {item} not found; give image files or folders of images")
    return images


def load_detector(cfg, checkpoint: str, device: str, trusted_checkpoints=()):
    from mmdet.apis import init_detector

    from pisa_train.checkpoint_compatibility import _shape, compare_state_dicts, mismatch_message
    from pisa_train.errors import CheckpointError
    from pisa_train.safe_checkpoint_loading import guard_checkpoint_loading, load_checkpoint_file

    if not Path(checkpoint).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} not found; give the path of a .pth file written by "
                              f"pisa-train (work_dirs/<config>/epoch_N.pth or iter_N.pth)")
    guard_checkpoint_loading(trusted_checkpoints)
    cfg = cfg.copy()
    cfg.model.backbone.init_cfg = None  # the checkpoint holds the backbone: no ImageNet download
    import warnings

    with warnings.catch_warnings():  # "checkpoint is None, use COCO classes": the classes are set below
        warnings.filterwarnings("ignore", message="checkpoint is None")
        model = init_detector(cfg, checkpoint=None, device="cpu", palette="none")
    state = load_checkpoint_file(checkpoint, map_location="cpu")
    weights = state.get("state_dict", state)
    meta = state.get("meta") or {}
    classes = list((meta.get("dataset_meta") or {}).get("classes") or [])
    bbox_head = getattr(getattr(model, "roi_head", None), "bbox_head", None)
    mismatched, missing = compare_state_dicts({k: _shape(v) for k, v in weights.items()},
                                              {k: _shape(v) for k, v in model.state_dict().items()})
    problem = mismatch_message(checkpoint, mismatched, missing, classes, getattr(bbox_head, "num_classes", None))
    if problem:
        raise CheckpointError(problem)
    from mmengine.runner.checkpoint import _load_checkpoint_to_model

    _load_checkpoint_to_model(model, state, strict=False)  # shapes and keys were checked above
    if classes:
        model.dataset_meta = {**(model.dataset_meta or {}), "classes": tuple(classes)}
    else:  # a checkpoint without metadata: the classes of the config's test set
        from pisa_train.dataset_presence import innermost_dataset

        config_classes = ((innermost_dataset(cfg.test_dataloader.get("dataset")) or {}).get("metainfo") or {}).get(
            "classes")
        if config_classes:
            model.dataset_meta = {**(model.dataset_meta or {}), "classes": tuple(config_classes)}
    model.cfg = cfg
    return model.to(device).eval()


def detections_of(result, image_id: int, score_thr: float) -> list[dict]:
    """One image's predictions as COCO result entries ([x, y, width, height] in pixels of
    the original image); ``category_id`` is the model's class index."""
    instances = result.pred_instances
    entries = []
    for box, score, label in zip(instances.bboxes.tolist(), instances.scores.tolist(), instances.labels.tolist()):
        if score < score_thr:
            continue
        x1, y1, x2, y2 = box
        entries.append({"image_id": image_id, "category_id": int(label),
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(float(score), 4)})
    return entries


def draw_detections(image_path: Path, detections: list[dict], classes, out_path: Path) -> None:
    from PIL import Image, ImageDraw

    with Image.open(image_path) as opened:
        image = opened.convert("RGB")
    draw = ImageDraw.Draw(image)
    for entry in sorted(detections, key=lambda d: d["score"]):  # best drawn last, on top
        x, y, w, h = entry["bbox"]
        colour = PALETTE[entry["category_id"] % len(PALETTE)]
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=2)
        name = classes[entry["category_id"]] if entry["category_id"] < len(classes) else str(entry["category_id"])
        text = f"{name} {entry['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x, y), text)
        text_top = max(0, y - (bottom - top) - 2)
        draw.rectangle([x, text_top, x + (right - left) + 2, text_top + (bottom - top) + 2], fill=colour)
        draw.text((x + 1, text_top), text, fill=(255, 255, 255))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path)


def output_names(images: list[Path]) -> list[str]:
    """File names for the drawn images: the input's name, numbered when two inputs share one."""
    seen: dict[str, int] = {}
    names = []
    for image in images:
        count = seen.get(image.name, 0)
        seen[image.name] = count + 1
        names.append(image.name if count == 0 else f"{image.stem}_{count}{image.suffix}")
    return names
