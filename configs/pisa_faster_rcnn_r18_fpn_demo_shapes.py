# A demo-sized PISA Faster R-CNN that trains from scratch on CPU in minutes:
# ResNet-18 with a 128-channel FPN, 300 proposals, on a synthetic dataset of
# coloured circles, squares and triangles at 128 px that pisa-train generates
# under data/demo_shapes/ on first use (no download). It shows the tool working
# end to end; it is not a benchmark.
_base_ = './pisa_faster_rcnn_r50_fpn_1x_coco.py'

data_root = 'data/demo_shapes/'
classes = ('circle', 'square', 'triangle')
# pisa-train generates this dataset under data_root when it is missing.
synthetic_dataset = dict(
    generator='shapes',
    seed=0,
    num_train_images=300,
    num_val_images=60,
    image_size=128)

model = dict(
    backbone=dict(
        depth=18,
        # From scratch: nothing is frozen and BatchNorm keeps learning its statistics.
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=128),
    rpn_head=dict(in_channels=128, feat_channels=128),
    roi_head=dict(
        bbox_roi_extractor=dict(
            # torchvision's RoIAlign gives the same output as mmcv's and its CPU
            # kernel is about 2.4x faster on 2 cores; a fixed 2x2 sampling grid per
            # bin costs less than the adaptive one on large proposals.
            roi_layer=dict(use_torchvision=True, sampling_ratio=2),
            out_channels=128),
        bbox_head=dict(
            in_channels=128, fc_out_channels=256, num_classes=len(classes))),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=300)))

image_scale = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=2,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator

# 300 images / batch 8 = 38 iterations an epoch, about 2 s each on 2 CPU cores.
max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[6],
        gamma=0.1),
]
# From scratch at lr 0.04, an occasional large gradient right after the warm-up
# can send the loss to NaN (seen with seed 0 and a 50-iteration warm-up): clip it.
optim_wrapper = dict(
    optimizer=dict(lr=0.04), clip_grad=dict(max_norm=35, norm_type=2))
auto_scale_lr = dict(base_batch_size=8)

# A fixed seed, so that every machine trains the same demo (up to floating-point order).
randomness = dict(seed=0)

default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=1, max_keep_ckpts=2))
log_processor = dict(window_size=10)
