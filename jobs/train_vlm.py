"""Ray Jobs entrypoint: `ray job submit --working-dir . -- python jobs/train_vlm.py CONFIG [key=value ...]`."""

import sys

from _entry import main

if __name__ == "__main__":
    sys.exit(main("train_vlm"))
