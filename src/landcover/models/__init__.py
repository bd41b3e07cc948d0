"""The networks and heads a model bundle names: timm backbones with their weights, and classical heads stored as
plain arrays. They sit below the bundle so that loading a bundle never reaches up into training."""

from landcover.models.backbones import (
    Preprocess,
    apply_bn_mode,
    build_model,
    feature_dim,
    pooled_features,
    set_trainable,
)
from landcover.models.weights import (
    ARCHITECTURES,
    adapt_first_conv,
    lite0_state_from_package,
    load_state,
    load_weights_file,
)

__all__ = [
    "ARCHITECTURES",
    "Preprocess",
    "adapt_first_conv",
    "apply_bn_mode",
    "build_model",
    "feature_dim",
    "lite0_state_from_package",
    "load_state",
    "load_weights_file",
    "pooled_features",
    "set_trainable",
]
