"""Chip datasets into training-ready forms: leak-free splits, folder trees, TFRecord / WebDataset / map files."""
