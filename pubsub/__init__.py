"""The indicator stream: the protobuf wire schema, indicator validation, one GossipSub topic
per TLP level, and the adapter that fixes py-libp2p's GossipSub defaults. Built by the
Indicator stream issue.
"""
