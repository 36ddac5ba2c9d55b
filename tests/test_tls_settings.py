"""AMQP_SSL and a rediss:// URL's parameters, checked (pure; the real TLS servers are
in ``test_tls``)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from pubtasks.errors import ConfigError
from pubtasks.rabbitmq import Connection
from pubtasks.settings import Settings
from pubtasks.tls import amqp_ssl, broker_use_ssl, tls_failure, unverified


def test_amqp_ssl_verifies_by_default_against_the_urls_host(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert amqp_ssl({"ca_certs": str(ca)}) == {
        "ca_certs": str(ca), "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None,
    }  # fmt: skip
    assert amqp_ssl(None) is None
    # "none" is said out loud, and then no host name is checked either
    options = amqp_ssl({"cert_reqs": "none"})
    assert options == {"cert_reqs": ssl.CERT_NONE} and unverified(options)
    assert amqp_ssl({"server_hostname": "rabbit.internal"})["server_hostname"] == "rabbit.internal"


def test_an_amqps_url_without_amqp_ssl_checks_the_host_name_too() -> None:
    s = Settings.load({"AMQP_URL": "amqps://u:p@h:5671//"})
    assert s.amqp_tls == {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
    assert Settings.load({}).amqp_tls is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("yes", "AMQP_SSL in celeryconfig.py is a str; give a dict"),
        ({"cafile": "x"}, "AMQP_SSL['cafile'] is not a key it takes; did you mean 'ca_certs'?"),
        ({"ca_certs": "/nowhere.pem"}, "AMQP_SSL['ca_certs']='/nowhere.pem' cannot be read"),
        ({"cert_reqs": "maybe"}, "AMQP_SSL['cert_reqs']='maybe' must be 'required'"),
        ({"server_hostname": ""}, "AMQP_SSL['server_hostname']='' must be a host name"),
    ],
)
def test_a_bad_amqp_ssl_is_one_line_naming_the_key(value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load({}, {"AMQP_SSL": value})
    assert expected in str(err.value)


def test_a_keyfile_needs_its_certfile(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    with pytest.raises(ConfigError, match="'keyfile' without its 'certfile'"):
        amqp_ssl({"keyfile": str(key)})


def test_celerys_broker_takes_the_tls_of_a_rediss_url() -> None:
    url = "rediss://:pw@h:6380/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/c.key"
    assert broker_use_ssl(url) == {
        "ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.pem", "ssl_keyfile": "/c.key",
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }  # fmt: skip
    assert broker_use_ssl("rediss://h/0?ssl_cert_reqs=none") == {"ssl_cert_reqs": ssl.CERT_NONE}
    assert broker_use_ssl("redis://h:6379/0") is None
    with pytest.raises(ConfigError, match="ssl_cert_reqs='sometimes'"):
        broker_use_ssl("rediss://h/0?ssl_cert_reqs=sometimes")


def test_a_tls_failure_is_found_behind_the_errors_that_wrap_it() -> None:
    verify = ssl.SSLCertVerificationError("certificate verify failed")
    try:
        try:
            raise verify
        except ssl.SSLError as exc:
            raise ConnectionError("Error 1 connecting") from exc
    except ConnectionError as outer:
        assert tls_failure(outer) is verify
    assert tls_failure(TimeoutError("timed out")) is None


def test_each_node_of_a_failover_list_is_checked_by_its_own_name() -> None:
    # kombu writes the host it connects to in the ssl dict, in place; a switch to the
    # next URL must not keep the first one's name
    options = {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
    conn = Connection("amqps://u:p@node-1:5671//;amqps://u:p@node-2:5671//", ssl=options)
    conn.ssl["server_hostname"] = "node-1"  # as kombu's establish_connection does
    conn.switch("amqps://u:p@node-2:5671//")
    assert conn.ssl == {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
    assert conn.hostname == "node-2"
