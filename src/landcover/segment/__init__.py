"""Segmentation: per-pixel land cover from image/mask pairs (networks in models/segmenters.py)."""
