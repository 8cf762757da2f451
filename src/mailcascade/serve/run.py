"""Run the app under uvicorn: loopback only without API keys; SIGTERM drains the work in flight."""

from __future__ import annotations

import ipaddress
import logging
from types import FrameType
from typing import Any

import uvicorn

from mailcascade.config import Settings
from mailcascade.errors import MailcascadeError
from mailcascade.serve.app import create_app

log = logging.getLogger("mailcascade.serve")
LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_host(host: str, settings: Settings) -> str:
    """The host to bind: as asked, except that without API keys nothing but loopback is served (with a warning)."""
    if settings.serve.api_keys:
        return host
    if is_loopback(host):
        log.warning("no API keys configured ([serve] api_keys or MAILCASCADE_SERVE__API_KEYS): serving without "
                    "authentication, on %s only", host)
        return host
    log.warning("no API keys configured ([serve] api_keys or MAILCASCADE_SERVE__API_KEYS): binding %s instead of %s, "
                "without authentication; configure keys to serve other hosts", LOOPBACK, host)
    return LOOPBACK


def serve(settings: Settings, host: str = LOOPBACK, port: int = 8080) -> None:
    """Serve until SIGINT/SIGTERM; requests and batch emails in flight finish first (queued ones stay queued).

    Without API keys only a loopback `host` is allowed (`bind_host` picks one, with a warning).
    """
    if not settings.serve.api_keys and not is_loopback(host):
        raise MailcascadeError(f"--host {host}: without API keys ([serve] api_keys or MAILCASCADE_SERVE__API_KEYS) "
                               "the service binds loopback only")
    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=None, lifespan="on")
    _Server(config, app.state.drain).run()


class _Server(uvicorn.Server):
    """uvicorn's server, telling the batch worker to claim nothing more as soon as a signal asks it to stop."""

    def __init__(self, config: uvicorn.Config, on_exit: Any) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)
