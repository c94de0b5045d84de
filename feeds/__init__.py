"""tickwire.feeds: market-data inputs: the wire format, ZeroMQ feed handlers with snapshot
recovery, the feed simulator, exchange capture loaders and seeded synthetic streams."""
