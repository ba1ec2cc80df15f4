"""defense."""
