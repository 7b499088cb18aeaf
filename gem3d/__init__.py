"""gem3d: GEM-3D generative enhancement for 3D medical images, as an auditable pipeline."""

__version__ = "0.1.0"
