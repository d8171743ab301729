# Prime Sample Attention (Cao, Chen, Loy, Lin, CVPR 2020) on RetinaNet R-50 FPN,
# 1x schedule on COCO 2017. On a one-stage detector PISA keeps every anchor (no
# sampling) and changes the losses: isr re-weights the positives by their IoU
# rank, carl ties the regression loss to the classification score, and the box
# loss is a SmoothL1 with beta 0.11. Released model: box AP 36.9.
_base_ = [
    '_base_/models/retinanet_r50_fpn.py',
    '_base_/datasets/coco_detection.py',
    '_base_/schedules/schedule_1x.py',
    '_base_/default_runtime.py',
    '_base_/retinanet_tta.py',
]

model = dict(
    bbox_head=dict(
        type='PISARetinaHead',
        loss_bbox=dict(type='SmoothL1Loss', beta=0.11, loss_weight=1.0)),
    train_cfg=dict(isr=dict(k=2.0, bias=0.0), carl=dict(k=1.0, bias=0.2)))

# RetinaNet trains at half the two-stage detectors' learning rate (for a total batch of 16).
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001))
