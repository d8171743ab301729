"""Datasets on disk: recognising a folder's layout (layout.py), reading COCO annotation files
(coco_annotations.py), checking a folder (check.py), checking that a config's files exist
(presence.py), image files on the command line (images.py), and the synthetic demo dataset
(synthetic_shapes.py)."""
