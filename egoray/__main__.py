import sys

from egoray.cli import main

sys.exit(main())
