"""Training: a manifest and a config into a run folder and a model bundle (frozen features + a head, or fine-tuning)."""
