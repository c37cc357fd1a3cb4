"""db3d: DreamBooth3D (subject-driven text-to-3D) as a reproducible research workflow."""

__version__ = "0.1.0"
