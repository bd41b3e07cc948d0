"""The package version (recorded in manifests, bundles and exports)."""

__version__ = "0.1.0"
