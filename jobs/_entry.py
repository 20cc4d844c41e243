"""Shared body of the ``jobs/<job>.py`` Ray Jobs entrypoints.

``ray job submit --working-dir . -- python jobs/<job>.py CONFIG [key=value ...]`` runs this on the
cluster's head as the job's driver: ``RAY_ADDRESS`` is set there, so ``egoray run`` joins the
cluster instead of starting a local Ray. The working directory (this repository) is on
``sys.path``, so the shipped ``egoray`` package is the one imported.
"""

from __future__ import annotations

import os
import sys


def main(job: str, argv: list[str] | None = None) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from egoray.cli import main as cli_main
    from egoray.config import ConfigError
    from egoray.pipelines import load_config

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(f"usage: python jobs/{job}.py CONFIG [key=value ...]", file=sys.stderr)
        return 2
    config_path, rest = args[0], args[1:]
    try:
        config = load_config(config_path, [a for a in rest if "=" in a and not a.startswith("-")])
    except ConfigError as e:
        print(f"egoray: config error: {e}", file=sys.stderr)
        return 2
    if config.job != job:
        print(f"egoray: {config_path} is a {config.job!r} config; run it with jobs/{config.job}.py", file=sys.stderr)
        return 2
    return cli_main(["run", config_path, *rest])
