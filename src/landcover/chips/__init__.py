"""Imagery and labels into chips and a manifest: labels on the grid, rules, cutting, pairs, the chips folder."""
