"""``python -m open_clip_c2lip.eval``: bad input exits with ``error: ...`` and status 1."""
import sys

from .cli import main

if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        sys.exit(f"error: {e}")
