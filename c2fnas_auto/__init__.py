"""c2fnas-auto: coarse-to-fine NAS for 3D medical segmentation, nnU-Net style."""

__version__ = "0.1.0"
