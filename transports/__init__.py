"""Building the libp2p host: transports, security, muxers, private swarms and limits.

Everything that decides how bytes leave this node lives here: which transports listen
(TCP, QUIC, WebSocket), which security protocols are offered (Noise, optionally TLS; never
plaintext or secio), which muxers (Yamux, then mplex), the private-swarm (pnet) guard and the
connection limits. Where py-libp2p 0.8.1's defaults are wrong for us, ``libp2p_host`` fixes
them in one place, with a comment saying what upstream does.
"""
