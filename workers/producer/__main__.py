"""``python -m workers.producer``."""

import sys

from workers.producer.main import main

sys.exit(main())
