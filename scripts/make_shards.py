"""Images + captions -> webdataset shards (image / ``txt`` / ``json``) for open_clip_train.

    python scripts/make_shards.py images/ --output-dir shards            # img.jpg + img.txt pairs
    python scripts/make_shards.py train.csv --output-dir shards --csv-img-key filepath --csv-caption-key title

The output folder must not already hold ``PREFIX-NNNNNN.tar`` shards (a rerun with another
``--samples-per-shard`` would leave stale ones); ``--overwrite`` replaces the shards an earlier run
of this script wrote there (listed in ``PREFIX.shards.json``) and deletes nothing else. CSV/TSV/parquet
tables are read as training reads them: ``--csv-separator`` defaults to a tab, relative image paths
are relative to the table's folder (a path that names another file relative to the working directory
is an error naming both).

Keys are the sample's zero-based position in sorted-path (folder) or row (table) order, zero-padded;
json holds ``caption`` and ``source`` (the image path). JPEG, PNG and WebP files are stored as they
are (``jpg`` / ``png`` / ``webp``); other formats are converted to the RGB training sees and stored
losslessly as ``png``. See ``open_clip_c2lip.fileio.shards`` for the details. Add concepts afterwards with
``python -m open_clip_c2lip.concepts 'shards/shard-{000000..N}.tar' --output-dir shards-c``.
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from open_clip_c2lip.fileio.shards import (BadSampleError, ShardDirError, ShardWriteStats, check_prefix,
                                    samples_from_csv, samples_from_folder, write_shards)
from open_clip_c2lip.fileio.tables import TableError, parse_separator


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("source", help="folder of images with .txt captions beside them, or a .csv/.tsv/.parquet")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--prefix", default="shard", help="shards are named PREFIX-000000.tar ...")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--csv-img-key", default="filepath")
    parser.add_argument("--csv-caption-key", default="title")
    parser.add_argument("--csv-separator", default="\\t",
                        help="as open_clip_train's --csv-separator (a tab unless given)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="count and skip corrupt images / missing captions instead of stopping")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the shards an earlier run wrote into --output-dir (never others)")
    args = parser.parse_args(argv)
    if args.samples_per_shard < 1:
        parser.error(f"--samples-per-shard must be >= 1, got {args.samples_per_shard}")
    try:
        check_prefix(args.prefix)
    except ValueError as exc:
        parser.error(f"--prefix: {exc}")
    try:
        args.csv_separator = parse_separator(args.csv_separator)
    except TableError as exc:
        parser.error(str(exc))
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise SystemExit(f"error: --output-dir {args.output_dir} exists and is not a folder")

    if os.path.isdir(args.source):
        samples = samples_from_folder(args.source)
    elif os.path.isfile(args.source):
        try:
            samples = samples_from_csv(args.source, args.csv_img_key, args.csv_caption_key, args.csv_separator)
        except TableError as exc:
            raise SystemExit(f"error: {exc}")
    else:
        raise SystemExit(f"error: {args.source}: no such file or folder")
    stats = ShardWriteStats()
    try:
        write_shards(samples, args.output_dir, args.prefix, args.samples_per_shard, skip_bad=args.skip_bad,
                     stats=stats, overwrite=args.overwrite)
    except ShardDirError as exc:
        raise SystemExit(f"error: {exc}")
    except BadSampleError as exc:
        raise SystemExit(f"error: {exc} (use --skip-bad to skip and count such samples)")
    except OSError as exc:
        raise SystemExit(f"error: {args.output_dir}: cannot write shards ({exc})")
    if stats.written == 0:
        raise SystemExit(f"error: {args.source}: no samples written\n{stats.summary()}")
    print(stats.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
