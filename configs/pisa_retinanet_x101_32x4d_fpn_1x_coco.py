# PISA RetinaNet with a ResNeXt-101 32x4d FPN backbone (32 groups of width 4),
# ImageNet-pretrained, 1x schedule on COCO 2017. Released model: box AP 40.7.
_base_ = './pisa_retinanet_r50_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        type='ResNeXt',
        depth=101,
        groups=32,
        base_width=4,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        style='pytorch',
        init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://resnext101_32x4d')))
