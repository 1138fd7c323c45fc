"""``python -m open_clip_c2lip.eval``: bad input exits with ``error: ...`` and status 1."""
import sys

from ..cli_errors import run
from .cli import main

if __name__ == "__main__":
    run(main, sys.argv[1:])
