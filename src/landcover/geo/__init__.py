"""Georeferenced reading: scenes (files stacked as bands, direct or warped windows), grids and tile keys, stretch."""
