"""Data: the built-in synthetic dataset (synthetic.py), ImageNet-layout folders (folder.py), the NVIDIA DALI
pipelines (imagenet.py; DALI is imported only when a loader is built), the resident small-dataset path
(resident.py), and the validation loader that training and evaluation share (loaders.py). Datasets are written
whole or not at all (pysoftlabel.atomic)."""
from .synthetic import make_synthetic_dataset, synthetic_summary

__all__ = ["make_synthetic_dataset", "synthetic_summary"]
