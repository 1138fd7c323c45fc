"""``python -m open_clip_c2lip.concepts``: see ``open_clip_c2lip.concepts.cli``."""
import sys

from open_clip_c2lip.concepts.cli import main

if __name__ == "__main__":
    sys.exit(main())
