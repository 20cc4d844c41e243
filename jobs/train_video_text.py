"""Ray Jobs entrypoint: `ray job submit --working-dir . -- python jobs/train_video_text.py CONFIG [key=value ...]`."""

import sys

from _entry import main

if __name__ == "__main__":
    sys.exit(main("train_video_text"))
