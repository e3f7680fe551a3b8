"""``python -m workers.inference``."""

import sys

from workers.inference.main import main

sys.exit(main())
