"""``python -m workers.dashboard``."""

import sys

from workers.dashboard.main import main

sys.exit(main())
