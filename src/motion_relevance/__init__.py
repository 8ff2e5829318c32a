"""motion_relevance: train 3D CNNs for action recognition and explain which motion they use."""

__version__ = "0.1.0"
