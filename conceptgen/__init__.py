"""conceptgen: machine-assisted discovery of spatiotemporal concepts for video models."""
__version__ = "0.1.0"
