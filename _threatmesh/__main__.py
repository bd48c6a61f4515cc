"""``python -m threatmesh`` runs the CLI (the same as the ``threatmesh`` command)."""

from threatmesh.node.cli import main

main()
