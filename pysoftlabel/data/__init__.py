"""Data: the built-in synthetic dataset (synthetic.py), ImageNet-layout folders (folder.py), the NVIDIA DALI
pipelines (imagenet.py; DALI is imported only when a loader is built) and the resident small-dataset path
(resident.py)."""
from .synthetic import make_synthetic_dataset

__all__ = ["make_synthetic_dataset"]
