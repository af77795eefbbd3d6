"""CDAnet: cross-domain augmentation networks for CTR prediction (Chen et al.), as a library."""

__version__ = "0.1.0"
