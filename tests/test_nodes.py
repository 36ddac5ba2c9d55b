"""The fault harness's own Redis (tests/support/nodes.py): the port it picks, and what
it does when that port is taken before redis-server binds it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.nodes import RedisNode, ephemeral_start, free_port


def test_a_free_port_lies_below_the_kernels_ephemeral_range() -> None:
    top = ephemeral_start()
    if top - 20000 < 1000:
        pytest.skip(f"this kernel's ephemeral range starts at {top}: no room below it")
    ports = {free_port() for _ in range(20)}
    assert all(20000 <= port < top for port in ports)


def test_the_ephemeral_range_defaults_when_it_cannot_be_read(tmp_path: Path) -> None:
    assert ephemeral_start(tmp_path / "missing") == 32768
    (tmp_path / "range").write_text("40000\t60999\n")
    assert ephemeral_start(tmp_path / "range") == 40000


@pytest.mark.integration  # starts a redis-server of its own
def test_a_first_start_on_a_port_taken_meanwhile_moves_to_a_free_one(tmp_path: Path) -> None:
    node = RedisNode(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", node.port))  # as an outgoing connection holds it
        taken = node.port
        try:
            node.start()
            assert node.port != taken
            assert node.url == f"redis://127.0.0.1:{node.port}/0"
        finally:
            node.kill()


@pytest.mark.integration  # starts a redis-server of its own
def test_a_restart_on_a_taken_port_fails_at_once_with_redis_own_words(tmp_path: Path) -> None:
    node = RedisNode(tmp_path)
    node.start()
    node.kill()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", node.port))  # as an outgoing connection holds it
        try:
            with pytest.raises(RuntimeError, match="Address already in use"):
                node.start()  # its clients know its port: no other will do
        finally:
            node.kill()
