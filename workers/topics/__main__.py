"""``python -m workers.topics``."""

import sys

from workers.topics.main import main

sys.exit(main())
