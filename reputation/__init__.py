"""Per-peer reputation, status announcements and supernode election. Built by the Reputation
issue.
"""
