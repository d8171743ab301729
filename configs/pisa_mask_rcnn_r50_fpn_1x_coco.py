# Prime Sample Attention (Cao, Chen, Loy, Lin, CVPR 2020) on Mask R-CNN R-50 FPN,
# 1x schedule on COCO 2017 instance segmentation. The PISA changes are those of
# pisa_faster_rcnn_r50_fpn_1x_coco.py (the RoI head, the ScoreHLRSampler, isr,
# carl, 2000 proposals); the mask branch is Mask R-CNN's. Released model: box AP
# 39.1, mask AP 35.2 (`pisa-train --list`).
_base_ = [
    '_base_/models/mask-rcnn_r50_fpn.py',
    '_base_/datasets/coco_instance.py',
    '_base_/schedules/schedule_1x.py',
    '_base_/default_runtime.py',
]

model = dict(
    roi_head=dict(
        type='PISARoIHead',
        bbox_head=dict(
            loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))),
    train_cfg=dict(
        rpn_proposal=dict(
            nms_pre=2000,
            max_per_img=2000,
            nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=0),
        rcnn=dict(
            sampler=dict(
                type='ScoreHLRSampler',
                num=512,
                pos_fraction=0.25,
                neg_pos_ub=-1,
                add_gt_as_proposals=True,
                k=0.5,
                bias=0.0),
            isr=dict(k=2, bias=0),
            carl=dict(k=1, bias=0.2))),
    test_cfg=dict(
        rpn=dict(
            nms_pre=2000,
            max_per_img=2000,
            nms=dict(type='nms', iou_threshold=0.7),
            min_bbox_size=0)))
