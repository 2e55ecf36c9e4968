"""Streaming window statistics of traffic, between data and core."""
