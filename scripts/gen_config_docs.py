"""Write docs/configuration.md from the processes' settings classes.

python scripts/gen_config_docs.py           # rewrite the file
python scripts/gen_config_docs.py --check   # exit 1 if the file is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devtools.settings_catalog import render_markdown  # noqa: E402

DOC_PATH = ROOT / "docs" / "configuration.md"


def main() -> int:
    """Write or check the configuration reference.

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, do not write")
    args = parser.parse_args()
    text = render_markdown()
    if args.check:
        current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
        if current != text:
            print(f"{DOC_PATH} is out of date: run python scripts/gen_config_docs.py")
            return 1
        print(f"{DOC_PATH} is up to date")
        return 0
    DOC_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
