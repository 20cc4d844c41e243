"""Seeds derived from what an item is, never from where or when it is processed."""

from __future__ import annotations

import hashlib
from typing import Any


def row_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes, machines and Python versions)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
