"""The package's Celery defaults and celeryconfig: which wins (pure: no service)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_without_celeryconfig_the_package_defaults_apply_with_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from pubtasks.celery import app; print(app.conf.beat_scheduler)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert out.stdout.strip() == "pubtasks.beat:Scheduler"
    assert out.stderr.strip().splitlines() == [
        f"pubtasks: no celeryconfig module in {tmp_path} or on sys.path; "
        "running on package defaults"
    ]


def test_celeryconfig_overrides_the_package_s_celery_defaults(tmp_path: Path) -> None:
    (tmp_path / "celeryconfig.py").write_text(
        "worker_prefetch_multiplier = 4\n"
        "broker_transport_options = {'visibility_timeout': 7200, 'unacked_key': 'x:unacked'}\n"
        "task_acks_late = False\n"
    )
    show = (
        "from pubtasks.celery import app; from pubtasks.tasks import publish; c = app.conf; "
        "print(c.worker_prefetch_multiplier, c.broker_transport_options, publish.acks_late)"
    )
    out = subprocess.run(
        [sys.executable, "-c", show],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    # celeryconfig's values win; what it leaves out keeps the package default...
    assert out.stdout.strip() == ("4 {'visibility_timeout': 7200, 'unacked_key': 'x:unacked'} True")
    # ... but not the publish task's own options, and it says so
    assert out.stderr.strip().splitlines() == [
        "pubtasks: task_acks_late in celeryconfig does not apply to pubtasks.publish and "
        "pubtasks.publish_group, which keep acks_late=True"
    ]


def show_settings(directory: Path) -> subprocess.CompletedProcess[str]:
    show = "from pubtasks.celery import app; s = app.settings; print([q.name for q in s.queues])"
    return subprocess.run(
        [sys.executable, "-c", show],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_a_name_pubtasks_does_not_read_gets_one_line_with_the_nearest(tmp_path: Path) -> None:
    (tmp_path / "celeryconfig.py").write_text(
        "PUBLISH_BATH = 2\nPUBLISH_INTERVAL = 3\nFLUX_CAPACITOR = 1\n_MINE = 4\nQUEUE = 'text'\n"
    )
    out = show_settings(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().splitlines() == [
        "pubtasks: FLUX_CAPACITOR in celeryconfig.py is not a setting pubtasks knows, and is "
        "ignored: it is not a setting of pubtasks (a name of your own: start it with _)",
        "pubtasks: PUBLISH_BATH in celeryconfig.py is not a setting pubtasks knows, and is "
        "ignored: did you mean PUBLISH_BATCH? (a name of your own: start it with _)",
        "pubtasks: PUBLISH_INTERVAL in celeryconfig.py is not read: pubtasks takes it from "
        "the environment only; set PUBLISH_INTERVAL there",
    ]


def test_following_the_shipped_configs_comments_to_queues_gives_a_working_config(
    tmp_path: Path,
) -> None:
    # Given the shipped celeryconfig.py, changed as its comments say to go from the
    # one-queue shorthand to QUEUES: uncomment the kombu lines, remove the names it lists
    shipped = (ROOT / "celeryconfig.py").read_text().splitlines()
    comment = next(i for i, line in enumerate(shipped) if "remove EXCHANGE_TYPE" in line)
    said = " ".join(shipped[comment : comment + 2])
    removed = [n for n in ("EXCHANGE_TYPE", "QUEUE", "BINDING_KEY", "QUEUE_TYPE") if n in said]
    lines = []
    for raw in shipped:
        line = raw[2:] if raw.startswith(("# from kombu import", "# QUEUES =")) else raw
        if not any(line.startswith(f"{name} =") for name in removed):
            lines.append(line)
    (tmp_path / "celeryconfig.py").write_text("\n".join(lines) + "\n")
    # Then the worker's settings load, with the queue of QUEUES, and nothing is warned of
    out = show_settings(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['text']"
    assert removed == ["EXCHANGE_TYPE", "QUEUE", "BINDING_KEY", "QUEUE_TYPE"]
    assert out.stderr.strip() == ""


def test_the_shipped_config_loads_without_a_warning() -> None:
    out = show_settings(ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == ""
