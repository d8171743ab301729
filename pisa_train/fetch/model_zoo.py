"""The released models pisa-train knows by name: MMDetection's PISA models and their Faster R-CNN baselines.

A name is a config in configs/ (``pisa-train pisa_ssd300_coco``) and, where a
checkpoint was released, a ``--load-from`` reference and a ``pisa-data weights
--only`` name. The table is copied from MMDetection v3.3.0: configs/pisa/metafile.yml
(names, configs, weights URLs, box and mask AP) and configs/faster_rcnn/metafile.yml
(the plain Faster R-CNN R-50 and X101-32x4d 1x models the Faster R-CNN configs
describe); configs/pisa/README.md gives the baselines' AP that PISA improves on and
lists Mask R-CNN X101-32x4d with a config but no checkpoint.
tests/test_model_zoo.py checks the table against the metafiles the installed mmdet
ships, so that a copying mistake fails a test.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReleasedModel:
    name: str  # MMDetection 2's model name, which is also the config's name in configs/
    mmdet_config: str  # the same model's config in MMDetection 3.3.0 (configs/...)
    box_ap: float | None  # COCO val2017, as published
    mask_ap: float | None
    weights_url: str | None  # None: a config without a released checkpoint
    baseline_box_ap: float | None = None  # the same detector without PISA (configs/pisa/README.md)
    baseline_mask_ap: float | None = None

    @property
    def file_name(self) -> str | None:
        return self.weights_url.rsplit("/", 1)[-1] if self.weights_url else None


_PISA = "https://download.openmmlab.com/mmdetection/v2.0/pisa/"
_FASTER_RCNN = "https://download.openmmlab.com/mmdetection/v2.0/faster_rcnn/"

MODEL_ZOO: dict[str, ReleasedModel] = {model.name: model for model in (
    ReleasedModel("pisa_faster_rcnn_r50_fpn_1x_coco", "pisa/faster-rcnn_r50_fpn_pisa_1x_coco.py", 38.4, None,
                  _PISA + "pisa_faster_rcnn_r50_fpn_1x_coco/pisa_faster_rcnn_r50_fpn_1x_coco-dea93523.pth", 36.4),
    ReleasedModel("pisa_faster_rcnn_x101_32x4d_fpn_1x_coco", "pisa/faster-rcnn_x101-32x4d_fpn_pisa_1x_coco.py", 41.9,
                  None, _PISA + "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco/"
                                "pisa_faster_rcnn_x101_32x4d_fpn_1x_coco-e4accec4.pth", 40.1),
    ReleasedModel("pisa_mask_rcnn_r50_fpn_1x_coco", "pisa/mask-rcnn_r50_fpn_pisa_1x_coco.py", 39.1, 35.2,
                  _PISA + "pisa_mask_rcnn_r50_fpn_1x_coco/pisa_mask_rcnn_r50_fpn_1x_coco-dfcedba6.pth", 37.3, 34.2),
    ReleasedModel("pisa_mask_rcnn_x101_32x4d_fpn_1x_coco", "pisa/mask-rcnn_x101-32x4d_fpn_pisa_1x_coco.py", None,
                  None, None, 41.1, 37.1),
    ReleasedModel("pisa_retinanet_r50_fpn_1x_coco", "pisa/retinanet-r50_fpn_pisa_1x_coco.py", 36.9, None,
                  _PISA + "pisa_retinanet_r50_fpn_1x_coco/pisa_retinanet_r50_fpn_1x_coco-76409952.pth", 35.6),
    ReleasedModel("pisa_retinanet_x101_32x4d_fpn_1x_coco", "pisa/retinanet_x101-32x4d_fpn_pisa_1x_coco.py", 40.7,
                  None, _PISA + "pisa_retinanet_x101_32x4d_fpn_1x_coco/"
                                "pisa_retinanet_x101_32x4d_fpn_1x_coco-a0c13c73.pth", 39.0),
    ReleasedModel("pisa_ssd300_coco", "pisa/ssd300_pisa_coco.py", 27.6, None,
                  _PISA + "pisa_ssd300_coco/pisa_ssd300_coco-710e3ac9.pth", 25.6),
    ReleasedModel("pisa_ssd512_coco", "pisa/ssd512_pisa_coco.py", 31.8, None,
                  _PISA + "pisa_ssd512_coco/pisa_ssd512_coco-247addee.pth", 29.3),
    ReleasedModel("faster_rcnn_r50_fpn_1x_coco", "faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py", 37.4, None,
                  _FASTER_RCNN + "faster_rcnn_r50_fpn_1x_coco/faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth"),
    ReleasedModel("faster_rcnn_x101_32x4d_fpn_1x_coco", "faster_rcnn/faster-rcnn_x101-32x4d_fpn_1x_coco.py", 41.2,
                  None, _FASTER_RCNN + "faster_rcnn_x101_32x4d_fpn_1x_coco/"
                                       "faster_rcnn_x101_32x4d_fpn_1x_coco_20200203-cff10310.pth"),
)}


def released_model(name: str) -> ReleasedModel | None:
    """The model of that name (a config name, with or without ``.py``), or None."""
    return MODEL_ZOO.get(name.removesuffix(".py"))


def models_with_weights() -> list[str]:
    return [name for name, model in MODEL_ZOO.items() if model.weights_url]
