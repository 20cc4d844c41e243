"""Class lists: Kinetics ``{name: id}`` JSON (or a JSON list), Charades ``cNNN Label`` lines, plain lines."""

from __future__ import annotations

import json
import re

from egoray import storage
from egoray.data.raw import InputError


def read_labels(url: str) -> list[tuple[str, str]]:
    """(id, label) pairs of a class list."""
    data = storage.read_bytes(url).decode("utf-8")
    if url.endswith(".json"):
        obj = json.loads(data)
        if isinstance(obj, dict):
            pairs = [(str(v), str(k)) for k, v in obj.items()]
        elif isinstance(obj, list):
            pairs = [(str(i), str(x)) for i, x in enumerate(obj)]
        else:
            raise InputError(f"{url}: expected a JSON object or list of class names")
    else:
        pairs = []
        for i, line in enumerate(x.strip() for x in data.splitlines()):
            if not line:
                continue
            m = re.match(r"^(c\d{3})\s+(.+)$", line)
            pairs.append((m.group(1), m.group(2)) if m else (str(i), line))
    return [(i, label.strip().strip('"').strip()) for i, label in pairs]
