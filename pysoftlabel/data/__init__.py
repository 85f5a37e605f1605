"""Data: the built-in synthetic dataset (synthetic.py), ImageNet-layout folders (folder.py), the NVIDIA DALI
pipelines (imagenet.py; DALI is imported only when a loader is built), the resident small-dataset path
(resident.py), the validation loader that training and evaluation share (loaders.py), and folders written
whole or not at all (atomic.py: the synthetic dataset, webdataset shards)."""
from .synthetic import make_synthetic_dataset, synthetic_summary

__all__ = ["make_synthetic_dataset", "synthetic_summary"]
