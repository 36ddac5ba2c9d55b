"""pubtasks: a Celery-beat scheduled RabbitMQ publisher with confirms and exact stats."""

from pubtasks.app import app

__all__ = ["app"]
