"""Logging: structlog for our code, with py-libp2p's standard-library logs routed through it.

Rules:
- One configuration, set once by the CLI (``configure_logging``): readable lines on a terminal,
  JSON lines with ``--log-json``. Logs go to stderr; stdout is for results (addresses, JSON).
- py-libp2p is noisy at INFO and logs normal events as failures (for example every DHT stream
  EOF as "Failed to read DHT message", every peer that hangs up during a handshake as a
  multiselect error). Its loggers are held at WARNING unless the level is ``debug``, and the
  messages known to be noise are dropped by ``Libp2pNoiseFilter``, here and nowhere else.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# Message prefixes py-libp2p 0.8.1 logs at WARNING/ERROR for events that are normal in a swarm.
LIBP2P_NOISE_PREFIXES = (
    "Failed to read DHT message",  # kad_dht.py: a peer closing its stream (StreamEOF)
    "MultiselectClient handshake: read failed",  # a peer hanging up during negotiation
    "Failed to open stream to peer",  # identify racing a closing connection
    "TransportManager.transport_for_dialing: no transport",  # an address kind we do not dial
    # swarm.py:2185: a dial-back (transports/dial_back.py) ends after the security handshake
    "fail to upgrade mux for peer",
    # relay/circuit_v2/protocol.py:351, :291: a relay client closing its HOP stream after the
    # exchange (as the spec says), and a circuit closing
    "Error reading from hop stream",
    "Unexpected error reading from stream",
)


class Libp2pNoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else str(record.msg)
        return not message.startswith(LIBP2P_NOISE_PREFIXES)


def configure_logging(level: str = "info", json: bool = False) -> None:
    numeric_level = getattr(logging, level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    handler.addFilter(Libp2pNoiseFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # py-libp2p (utils/logging.py, run at import) sets the "libp2p" logger to propagate=False
    # with no handler unless LIBP2P_DEBUG is set, so its warnings bypass every handler and
    # reach stderr through logging.lastResort, unformatted and unfiltered. Route them here.
    libp2p_logger = logging.getLogger("libp2p")
    libp2p_logger.handlers.clear()
    libp2p_logger.propagate = True
    libp2p_level = numeric_level if numeric_level <= logging.DEBUG else logging.WARNING
    libp2p_logger.setLevel(max(libp2p_level, numeric_level))
    for quiet in ("hypercorn.access", "hypercorn.error", "zeroconf", "aioquic"):
        logging.getLogger(quiet).setLevel(max(logging.WARNING, numeric_level))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
