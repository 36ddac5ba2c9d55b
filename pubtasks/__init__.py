"""pubtasks: a Celery-beat scheduled RabbitMQ publisher with confirms and exact stats.

Importing the package builds nothing: ``celery -A pubtasks`` finds the app in
``pubtasks.celery``, as Celery looks for it, and the pure modules (the schedule
maths, the message, the confirm bookkeeping) import without Celery's app.
"""
