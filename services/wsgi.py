"""The WSGI entry point for gunicorn: ``services.wsgi:app`` (the app is built per worker process)."""

from services.app import create_app

app = create_app()
