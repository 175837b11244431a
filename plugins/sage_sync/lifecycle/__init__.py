"""The use cases the CLI and the Connect pages share: connect, disconnect, reconnect, move Synced From, reset."""
