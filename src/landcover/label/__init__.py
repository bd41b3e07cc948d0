"""Labelling: sparse scribbles to dense ground truth through the dense CRF."""
