"""Data: the built-in synthetic dataset (the DALI pipelines are issue 4)."""
from .synthetic import make_synthetic_dataset

__all__ = ["make_synthetic_dataset"]
