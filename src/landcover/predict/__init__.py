"""A model bundle applied: chips of a manifest, whole rasters, chip folders; torch and onnxruntime."""
