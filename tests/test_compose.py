"""docker-compose.yml, checked as far as this machine can without a Docker engine."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from pubtasks.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def worker_env() -> dict[str, str]:
    text = COMPOSE.read_text()
    block = text.split("\n  worker:\n", 1)[1].split("\n    environment:\n", 1)[1]
    pairs = re.findall(r"^      (\w+): (.+)$", block.split("\n    depends_on:", 1)[0], re.M)
    return {k: v.strip('"') for k, v in pairs}


def test_the_worker_runs_the_documented_command_after_healthy_services() -> None:
    text = COMPOSE.read_text()
    assert 'command: ["celery", "-A", "pubtasks", "worker", "-B", "-l", "info"]' in text
    worker = yaml.safe_load(text)["services"]["worker"]
    assert worker["depends_on"] == {
        "rabbitmq": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert text.count("healthcheck:") == 3
    assert 'test: ["CMD", "pubtasks", "health"]' in text
    assert '"--appendonly", "yes"' in text  # Redis keeps the counters across restarts


def test_the_worker_environment_is_valid_settings() -> None:
    env = worker_env()
    assert set(env) == {"AMQP_URL", "REDIS_URL", "PUBLISH_INTERVAL"}
    s = Settings.load(env, {})
    user_pass = re.search(
        r"RABBITMQ_DEFAULT_USER: (\w+)\n\s+RABBITMQ_DEFAULT_PASS: (\w+)", COMPOSE.read_text()
    )
    assert user_pass is not None
    assert s.amqp_url == f"amqp://{user_pass[1]}:{user_pass[2]}@rabbitmq:5672//"
    assert s.redis_url == "redis://redis:6379/0"


def test_docker_compose_accepts_the_file() -> None:
    # Not skipped when missing: scripts/services installs it, and a check that quietly
    # does not run would pass for a broken file.
    assert shutil.which("docker-compose"), "docker-compose is missing: run scripts/services"
    subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], check=True, timeout=60)


CLUSTER = ROOT / "docker-compose.cluster.yml"


def cluster_worker_env() -> dict[str, str]:
    block = CLUSTER.read_text().split("\nx-worker: &worker\n", 1)[1]
    block = block.split("\n  environment:\n", 1)[1].split("\n  depends_on:", 1)[0]
    pairs = re.findall(r"^    (\w+): (.+)$", block, re.M)
    return {k: v.strip('"') for k, v in pairs}


def test_docker_compose_accepts_the_cluster_file() -> None:
    assert shutil.which("docker-compose"), "docker-compose is missing: run scripts/services"
    subprocess.run(["docker-compose", "-f", str(CLUSTER), "config", "-q"], check=True, timeout=60)


def test_the_cluster_workers_name_every_node_and_sentinel_of_the_file() -> None:
    text = CLUSTER.read_text()
    env = cluster_worker_env()
    assert set(env) == {
        "AMQP_URL_FILE", "REDIS_URL", "REDIS_MASTER_NAME", "QUEUE_TYPE", "PUBLISH_INTERVAL",
    }  # fmt: skip
    # the URL is the secret the file names, where compose mounts it
    secret = re.search(r"\nsecrets:\n  amqp_url:\n    file: \./(\S+)\n", text)
    assert secret is not None and env["AMQP_URL_FILE"] == "/run/secrets/amqp_url"
    assert "  secrets:\n    - amqp_url\n" in text.split("\nx-worker: &worker\n", 1)[1]
    env["AMQP_URL_FILE"] = str(ROOT / secret[1])
    s = Settings.load(env, {"QUEUE_TYPE": env["QUEUE_TYPE"]})  # as celeryconfig.py reads it
    [queue] = s.queues
    assert queue.queue_arguments == {"x-queue-type": "quorum"}
    nodes = re.findall(r"amqp://pubtasks:pubtasks@([\w-]+):5672//", s.amqp_url)
    assert nodes == ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
    for node in nodes:  # a service of that name and hostname, in the cluster's peer list
        assert f"\n  {node}:\n    <<: *rabbitmq\n    hostname: {node}\n" in text
    peers = (ROOT / "docker" / "rabbitmq-cluster.conf").read_text()
    assert re.findall(r"nodes\.\d = rabbit@([\w-]+)", peers) == nodes
    sentinels = re.findall(r"sentinel://([\w-]+):26379", s.redis_url)
    assert sentinels == ["sentinel-1", "sentinel-2", "sentinel-3"]
    for name in sentinels:
        service = f"\n  {name}:\n    <<: *sentinel\n    environment:\n"
        assert f"{service}      SENTINEL_NAME: {name}\n" in text
    assert f"'sentinel monitor {s.redis_master_name} redis-master 6379 2'" in text
    assert '"--replicaof", "redis-master", "6379"' in text
    assert 'os.environ.get("QUEUE_TYPE"' in (ROOT / "celeryconfig.py").read_text()
