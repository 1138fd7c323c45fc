"""``python -m open_clip_c2lip.train ARGS``: ``python -m open_clip_train.main ARGS`` with C2LIP active
(``open_clip_c2lip.integration.launch``)."""
import sys

from open_clip_c2lip.integration.launch import main

if __name__ == "__main__":
    # upstream's main returns -1 when it refuses to run (e.g. an existing experiment): exit status 1
    sys.exit(0 if main() in (None, 0) else 1)
