"""``python -m sage_sync``: the command line over the lifecycle layer."""
