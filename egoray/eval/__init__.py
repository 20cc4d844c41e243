"""Evaluation metrics (numpy, Ray-free)."""
