"""tickwire.feeds: market-data inputs: exchange captures, and (later) ZeroMQ feed handlers."""
