"""The fault harness: what the tests and ``scripts/chaos`` and ``scripts/cluster`` use to
break RabbitMQ and Redis on this machine and to account for every tick afterwards.

Not shipped: the wheel holds ``pubtasks`` and ``pubtasks bench`` only.

- ``chaos``: random faults against two ``-B`` workers, then the account;
- ``cluster``: a 3-node RabbitMQ cluster and Redis with Sentinels of its own;
- ``nodes``: a RabbitMQ node and a Redis of a test's own, to kill and start again;
- ``proxy``: a TCP proxy that can cut a connection silently;
- ``ledger``: every tick the schedule made due, matched against what RabbitMQ delivered.
"""
