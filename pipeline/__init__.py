"""Concrete pipelines built from ``tasks`` (the demo MLP) and their configuration."""
