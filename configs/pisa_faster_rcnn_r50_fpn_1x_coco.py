# Prime Sample Attention (Cao, Chen, Loy, Lin, CVPR 2020) on Faster R-CNN R-50 FPN.
# PISA changes only how RoIs are sampled and weighted:
#   - ScoreHLRSampler: negatives ranked by hierarchical local rank (HLR) of score;
#   - isr: importance-based sample reweighting of positives (by IoU-HLR);
#   - carl: classification-aware regression loss;
# and keeps 2000 proposals per image in training and testing.
_base_ = './faster_rcnn_r50_fpn_1x_coco.py'

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
