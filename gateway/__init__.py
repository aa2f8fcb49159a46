"""ws-gateway: a WebSocket gateway sidecar for FastAPI apps on Kubernetes."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
