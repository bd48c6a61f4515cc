"""The node: composes identity, transports and (later) discovery, pubsub and reputation into
one running service; its config, home, local API and CLI. Nothing imports this package."""
