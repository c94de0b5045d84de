"""tickwire.replay: stored ticks back through the engine."""
