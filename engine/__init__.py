"""tickwire.engine: instruments, the pipeline, worker processes, the daemon, config and the CLI."""
