"""Synthetic data with known answers (label noise, clustered embeddings) and the demo data."""
