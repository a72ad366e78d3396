"""The example gateway in FastAPI: `create_app()` in app.py; `python -m examples.fastapi` is the demo."""
