"""Share of the authors' concept negatives that are false in a demo world (benchmarks/demo.md).

With the authors' labels (docs/method.md §7) the concept of caption j is a negative for every image
i != j of the batch, even when image i shows that very object. This counts, over sampled training
batches, the fraction of those (image, concept) negatives whose concept names an object the image
shows. No training; a world is given by its flags.

``python scripts/demo_false_negatives.py`` (this world) and
``python scripts/demo_false_negatives.py --grid 4 --jitter 0 --colours red green blue --min-objects 3
--max-objects 3 --held-out-block 0`` (the "v0.1 world" of benchmarks/demo.md).
"""
import random
import sys


def false_negative_share(spec, held, batch_size: int = 64, batches: int = 200, seed: int = 0):
    from open_clip_c2lip.demo.world import balanced_scenes
    rng = random.Random(seed)
    false = total = 0
    for _ in range(batches):
        phrases = [{o.phrase for o in s.objects} for s in balanced_scenes(spec, batch_size, rng, avoid=held)]
        for i, image in enumerate(phrases):
            for j, caption in enumerate(phrases):
                if i != j:
                    total += len(caption)
                    false += len(caption & image)
    return false / total


def main(argv=None) -> None:
    from open_clip_c2lip.demo import cli
    from open_clip_c2lip.demo.world import held_out_pairs
    args = cli.parse_args(argv)
    held = held_out_pairs(args.world, args.seed)
    share = false_negative_share(args.world, held, args.batch_size)
    print(f"batch {args.batch_size}: {100 * share:.1f} % of concept negatives name an object the image shows")


if __name__ == "__main__":
    sys.exit(main())
