"""How a container is started: request -> plan -> apply.  Knows nothing of schedulers or the CLI."""
