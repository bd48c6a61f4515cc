"""Finding peers: Kademlia DHT with the swarm's own protocol id, bootstrap, mDNS, rendezvous,
the peer cache and membership events. Built by the Discovery issue; the Foundation dials
``--bootstrap`` addresses from ``threatmesh.node``.
"""
