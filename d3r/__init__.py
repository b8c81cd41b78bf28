"""d3r: distill multi-view 3D reconstruction teachers (Fast3R) into small students."""

__version__ = "0.1.0"
