"""The example gateway in Litestar: `create_app()` in app.py; `python -m examples.litestar` is the demo."""
