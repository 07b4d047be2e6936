"""DACS: unsupervised domain adaptation for semantic segmentation, as a DVC pipeline."""

__version__ = "0.1.0"
