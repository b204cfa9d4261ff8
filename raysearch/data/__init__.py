"""Datasets: readers for on-disk formats, the phantom generator, preprocessing and its cache."""
