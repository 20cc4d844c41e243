"""Narration data: readers for Ego4D / EK-100 inputs, text clean-up, splits, synthetic data."""
