"""The metrics function: Prometheus /metrics (`metrics.app`), its scrape-time gauges
(`metrics.live_gauges`)."""
