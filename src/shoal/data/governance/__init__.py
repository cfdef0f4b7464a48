"""Knowing what is in the training data: personal data and secrets, duplicates, contamination, ..."""
