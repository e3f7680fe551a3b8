"""``python -m workers.drift_monitor``."""

import sys

from workers.drift_monitor.main import main

sys.exit(main())
