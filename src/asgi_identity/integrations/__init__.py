"""Optional integrations with web frameworks; each imports its framework, nothing else does."""
