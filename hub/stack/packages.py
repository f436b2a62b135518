"""Make sure Debian packages are installed: the stack's `rabbitmq-server` and `influxdb` by default."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from hub.core.errors import StackError

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
INFLUXD = Path("/usr/bin/influxd")
#: Debian package -> the file that shows it is installed.
REQUIRED_PACKAGES = {"rabbitmq-server": RABBITMQ_SERVER, "influxdb": INFLUXD}
#: Debian's hook that keeps package scripts from starting the system-wide services.
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def missing_packages(required: Mapping[str, Path] = REQUIRED_PACKAGES) -> list[str]:
    return [name for name, marker in required.items() if not marker.exists()]


def ensure_packages(required: Mapping[str, Path] = REQUIRED_PACKAGES) -> list[str]:
    """Install what is missing of `required` (package -> a file it installs) when we are root on
    Debian; otherwise say what to install.

    Returns the packages it installed. The system-wide services are not started: the stack
    runs its own project-local processes.
    """
    missing = missing_packages(required)
    if not missing:
        return []
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    can_install = os.geteuid() == 0 and Path("/etc/debian_version").exists() and shutil.which("apt-get")
    if not can_install:
        raise StackError(f"missing Debian packages: {' '.join(missing)}. Install them with: sudo {' '.join(command)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    added_policy = not POLICY_RC_D.exists()
    if added_policy:
        POLICY_RC_D.write_text("#!/bin/sh\n# added by hub.stack while installing packages\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        for step in (["apt-get", "update", "-q"], command):
            result = subprocess.run(step, env=env, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise StackError(f"`{' '.join(step)}` failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    finally:
        if added_policy:
            POLICY_RC_D.unlink(missing_ok=True)
    still_missing = missing_packages(required)
    if still_missing:
        raise StackError(f"installed {' '.join(missing)} but {' '.join(still_missing)} still missing")
    return missing
