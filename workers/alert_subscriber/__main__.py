"""``python -m workers.alert_subscriber``."""

import sys

from workers.alert_subscriber.main import main

sys.exit(main())
