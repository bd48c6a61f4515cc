"""The wire schema (threatmesh.proto) and its generated Python bindings (scripts/gen-proto)."""
