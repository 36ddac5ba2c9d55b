"""The package's Celery defaults and celeryconfig: which wins (pure: no service)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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
        "pubtasks: task_acks_late in celeryconfig does not apply to pubtasks.publish, "
        "which keeps acks_late=True"
    ]
