"""``python -m workers.trainer``."""

import sys

from workers.trainer.main import main

sys.exit(main())
