"""Ray Jobs entrypoint: `ray job submit --working-dir . -- python jobs/ingest.py CONFIG [key=value ...]`."""

import sys

from _entry import main

if __name__ == "__main__":
    sys.exit(main("ingest"))
