"""What a run produced, for people to read: COCO metrics, per-class AP and precision-recall
curves (coco_metrics.py), training curves (training_curves.py), drawn predictions
(predictions.py)."""
