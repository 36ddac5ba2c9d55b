"""``pubtasks bench``: confirmed-publish throughput, tick fidelity, recovery and memory.

Everything runs side by side, in one run, against the same broker:

a. ``throughput``: N persistent messages, each way to a fresh durable queue: the
   pika example's pattern (``SelectConnection``, confirms, at most 256
   unconfirmed), kombu's ``confirm_publish`` (one confirm per publish), and
   pubtasks (one tick of N messages through the confirm window), with batched
   writes and through py-amqp's own ``basic_publish``;
b. ``ticks``: the real ``celery -A pubtasks worker -B`` (``worker``) at a short
   interval, with a Celery ``timedelta`` entry beside the grid entry, judged by
   ``fidelity``;
c. only with ``--restart-broker``: a restart of the local RabbitMQ node's app
   (``rabbitmqctl stop_app``/``start_app``) while that worker runs, timed from the
   broker accepting connections to the next confirm (``services``);
d. memory: the resident memory of all the worker's processes at the end of (b).

Each run uses entities and Redis keys of its own (``names``) and deletes them
afterwards. ``command`` holds the command line, ``report`` the Markdown.
"""
