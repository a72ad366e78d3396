"""Limits, LLM token quotas and the readers of usage in responses."""
