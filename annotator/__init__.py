"""The annotator: a Flask app where people turn candidate clusters into named,
approved, versioned concepts. Build it with :func:`create_app`."""
from annotator.app import create_app

__all__ = ["create_app"]
