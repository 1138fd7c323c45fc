"""Images + captions -> webdataset shards (``jpg`` / ``txt`` / ``json``) for open_clip_train.

    python scripts/make_shards.py images/ --output-dir shards            # img.jpg + img.txt pairs
    python scripts/make_shards.py train.csv --output-dir shards --csv-img-key filepath --csv-caption-key title

The output folder must not already hold ``PREFIX-NNNNNN.tar`` shards (a rerun with another
``--samples-per-shard`` would leave stale ones); ``--overwrite`` replaces the shards an earlier run
of this script wrote there (listed in ``PREFIX.shards.json``) and deletes nothing else. CSV/TSV lists
are read like open_clip_train reads them: ``--csv-separator`` defaults to a tab.

Keys are the sample's zero-based position in sorted-path (folder) or row (CSV) order, zero-padded;
json holds ``caption`` and ``source`` (the image path). Non-JPEG images are re-encoded to JPEG. See
``open_clip_c2lip.fileio.shards`` for the details. Add concepts afterwards with
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
    parser.add_argument("source", help="folder of images with .txt captions beside them, or a .csv/.tsv")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--prefix", default="shard", help="shards are named PREFIX-000000.tar ...")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--csv-img-key", default="filepath")
    parser.add_argument("--csv-caption-key", default="title")
    parser.add_argument("--csv-separator", default="\\t",
                        help="as open_clip_train's --csv-separator (a tab unless given)")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="for re-encoded images (1..100)")
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
    if not 1 <= args.jpeg_quality <= 100:
        parser.error(f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}")
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
                     quality=args.jpeg_quality, stats=stats, overwrite=args.overwrite)
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
