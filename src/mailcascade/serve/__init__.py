"""`mailcascade serve`: an HTTP service over a Pipeline (FastAPI + uvicorn). The pipeline never imports this.

Needs the `serve` extra: `pip install 'mailcascade[serve]'`.
"""

from __future__ import annotations

from mailcascade.serve.app import create_app
from mailcascade.serve.run import serve

__all__ = ["create_app", "serve"]
