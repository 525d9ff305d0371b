"""BarlowTwins-CXR: self-supervised pre-training for chest X-ray abnormality detection."""

__version__ = "0.1.0"
