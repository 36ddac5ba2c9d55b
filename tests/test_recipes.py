"""The documented configs: the recipes of docs/schedule.md and the README's entry of one's
own. Each is loaded as celeryconfig, declared, and published once."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from pubtasks.message import Tick
from pubtasks.publisher import Publisher
from pubtasks.settings import Settings
from pubtasks.stats import Stats
from tests.helpers import take

ROOT = Path(__file__).resolve().parent.parent
SCHEDULE = ROOT / "docs" / "schedule.md"
README = ROOT / "README.md"


def section(path: Path, heading: str) -> str:
    """The text of ``path``'s section ``## heading``, up to the next ``## ``."""
    text = path.read_text()
    found = text[text.index(f"\n## {heading}\n") :]
    end = found.find("\n## ", 1)
    return found if end < 0 else found[:end]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def recipes() -> list[str]:
    """The python blocks of the "Recipes" section of docs/schedule.md."""
    return python_blocks(section(SCHEDULE, "Recipes"))


def own_entry() -> list[str]:
    """The python block of the README's "Your own message" section."""
    return python_blocks(section(README, "Your own message"))


def test_the_docs_have_their_recipes() -> None:
    found = recipes()
    assert len(found) == 5
    for kind in ("fanout", "crontab", "payload", "x-message-ttl", "quorum"):
        assert any(kind in r for r in found), kind
    [readme] = own_entry()
    assert '"headers"' in readme


@pytest.mark.integration
@pytest.mark.parametrize(
    "recipe", recipes() + own_entry(), ids=lambda r: re.findall(r'"(\w[\w-]*)": \{', r)[0]
)
def test_a_recipe_loads_declares_and_publishes(
    recipe: str, amqp_url: str, redis_url: str, prefix: str, stats: Stats
) -> None:
    # Given the recipe as a celeryconfig module, on this test's vhost and prefix
    conf: dict[str, Any] = {}
    exec(compile(recipe, "celeryconfig.py", "exec"), conf)
    conf.update(STATS_PREFIX=prefix, CONFIRM_TIMEOUT=2.0)
    s = Settings.load({"AMQP_URL": amqp_url, "REDIS_URL": redis_url}, conf)
    assert s.recipes, "a recipe has publish entries"
    p = Publisher(s, stats)
    try:
        p.stream.ensure()  # the topology, declared
        with Connection(amqp_url) as conn:
            channel = conn.default_channel
            for name, r in s.recipes.items():  # a consumer of each entry's messages
                channel.queue_declare(f"watch-{name}", durable=False, auto_delete=False)
                channel.queue_bind(f"watch-{name}", r.exchange, r.routing_key)
        # When each entry ticks once
        for name, r in s.recipes.items():
            tick = Tick(name, round(time.time(), 1), stats.next_number(), recipe=r)
            result = p.publish_tick(tick)
            # Then RabbitMQ confirmed it, and it arrived as the entry said
            assert result.outcome == "acked", name
            [got] = take(amqp_url, f"watch-{name}")
            assert got.properties["message_id"] == tick.message_id
            for key, value in r.properties.items():
                assert got.properties[key] == value, key
            headers = got.properties.get("application_headers") or {}
            for key, value in r.headers.items():
                assert headers[key] == value, key
    finally:
        p.close()
    totals = stats.snapshot().totals
    assert (totals.acked, totals.failed, totals.returned) == (len(s.recipes), 0, 0)
