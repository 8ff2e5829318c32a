"""Networks: C3D and the Sports-1M weight loader."""

from motion_relevance.models.c3d import C3D

__all__ = ["C3D"]
