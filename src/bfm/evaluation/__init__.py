"""Evaluation of trained models on held-out batches."""
