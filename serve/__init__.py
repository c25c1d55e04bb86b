"""flexlog's HTTP service (installed as ``flexlog.serve``): an OpenAI-compatible API in front
of a bundle's ensemble, with a native batch endpoint, the cache's human-feedback loop, health
checks and Prometheus metrics. ``flexlog serve --bundle B`` runs it; programs call
:func:`create_app`."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
