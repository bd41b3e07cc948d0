"""Segmentation: per-pixel land cover from image/mask pairs (networks in models/segmenters.py, their training in
train/segmentation.py), and the dense CRF."""

LOSSES = ("ce", "dice", "ce+dice")
"""Segmentation losses (landcover.segment.losses)."""
