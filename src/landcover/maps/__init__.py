"""Class maps: the COG writer and reader, figures, change between two maps."""
