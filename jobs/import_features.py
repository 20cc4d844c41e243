"""Ray Jobs entrypoint: `ray job submit --working-dir . -- python jobs/import_features.py CONFIG [key=value ...]`."""

import sys

from _entry import main

if __name__ == "__main__":
    sys.exit(main("import_features"))
