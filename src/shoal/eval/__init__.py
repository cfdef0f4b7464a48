"""Evaluation: quality, calibration and the report `shoal eval` writes."""
