"""landcover: aerial and satellite imagery into land-cover maps."""

__version__ = "0.1.0"
