"""The stack's folders are private: only their owner may list or enter them.

RabbitMQ writes its data (every user's password hash among it) with mode 0644, and influxd
its data likewise: the folders around them are what keeps other users of the machine out.
"""

from __future__ import annotations

from pathlib import Path

#: Read, write and enter for the owner; nothing for the group or others.
PRIVATE_FOLDER_MODE = 0o700


def private_folder(path: Path) -> Path:
    """`path`, made if missing (with its parents), and mode 0700 even if it was made before with more."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_FOLDER_MODE)
    path.chmod(PRIVATE_FOLDER_MODE)
    return path
