"""Settings and the Celery app."""
