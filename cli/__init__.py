"""The `topiary` command on top of everything: CLI, Python client, demo."""
