"""Device accounts an earlier version made get this version's permissions (e.g. their own log
lines) whenever `stack up` finds the broker running: nobody has to provision them again."""

from __future__ import annotations

from collections.abc import Callable

from hub.clients.management import ManagementAdmin
from hub.core.config import Settings
from hub.core.permissions import device_permission_version, permission_definitions


def upgrade_device_permissions(settings: Settings, progress: Callable[[str], None]) -> list[str]:
    """Give every device account with the earlier version's permissions this version's; returns them."""
    admin = ManagementAdmin(settings)
    earlier = sorted(
        str(permission["user"])
        for permission in admin.topic_permissions()
        if device_permission_version(permission) == "earlier"
    )
    if earlier:
        admin.import_definitions(permission_definitions(earlier))
        progress(
            f"gave {len(earlier)} device accounts of an earlier version this version's permissions (their log lines)"
        )
    return earlier
