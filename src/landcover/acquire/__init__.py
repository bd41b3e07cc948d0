"""Acquisition: imagery and labels for an area from STAC catalogs, composited per pixel (`run.acquire`)."""
