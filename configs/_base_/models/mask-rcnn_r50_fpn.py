# Mask R-CNN with a ResNet-50 FPN backbone (He et al., 2017), 80 COCO classes, as
# MMDetection 3.3.0 defines it: Faster R-CNN R-50 FPN plus a mask branch (a 14x14
# RoIAlign and a 4-conv FCN head predicting 28x28 masks per class).
_base_ = './faster-rcnn_r50_fpn.py'

model = dict(
    type='MaskRCNN',
    data_preprocessor=dict(pad_mask=True),  # pad the masks as the images
    roi_head=dict(
        mask_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32]),
        mask_head=dict(
            type='FCNMaskHead',
            num_convs=4,
            in_channels=256,
            conv_out_channels=256,
            num_classes=80,
            loss_mask=dict(
                type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    train_cfg=dict(
        # Unlike Faster R-CNN's, the RoI assigner also matches low-quality boxes.
        rcnn=dict(assigner=dict(match_low_quality=True), mask_size=28)),
    test_cfg=dict(rcnn=dict(mask_thr_binary=0.5)))
