"""``python -m open_clip_c2lip.train ARGS``: ``python -m open_clip_train.main ARGS`` with C2LIP active
(``open_clip_c2lip.integration.launch``)."""
from open_clip_c2lip.integration.launch import main

if __name__ == "__main__":
    main()  # like ``python -m open_clip_train.main``, whose return value is not the exit status
