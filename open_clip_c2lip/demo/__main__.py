"""``python -m open_clip_c2lip.demo``: see ``open_clip_c2lip.demo.cli``."""
from .cli import main

if __name__ == "__main__":
    main()
