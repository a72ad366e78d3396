"""Runnable example gateways built on asgi-identity (FastAPI and Litestar)."""
