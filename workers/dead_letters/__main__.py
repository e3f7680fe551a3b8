"""``python -m workers.dead_letters``."""

import sys

from workers.dead_letters.main import main

sys.exit(main())
