"""How many samples of real captions have a usable concept, and what counting it costs.

1. COCO val2017 captions (``--captions``, default ``$C2LIP_TEST_DATA/coco_captions_val2017.json``)
   with their own spaCy concepts, packed by ``TextPacker`` with C2LIP-Tiny's tokenizer (CLIP BPE,
   context 32) at ``P = 8``, in batches of ``--batch-size``: ``C2LIPLoss.last_concept_usage`` summed
   over the batches, in both concept modes and both duplicate rules. This is what the training run's
   concept-usage report shows for healthy data, next to which the warning threshold is set.
2. The cost of the count inside ``C2LIPLoss`` (``concept_usage`` and, for ``ignore``,
   ``images_holding`` on the identities the loss has already computed) against the loss's forward + backward at the recipe's sizes (M = 96,
   P = 8, 3 concepts per image, T = 196, D = 768, L = 64), fp32 CPU, ``--repeats`` rounds.

    OMP_NUM_THREADS=1 python scripts/bench_concept_usage.py
"""
import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from open_clip_c2lip.layout import unpack_texts
from open_clip_c2lip.loss import CONCEPT_USAGE_KEYS, C2LIPLoss, concept_identities, concept_usage, images_holding

REPO = Path(__file__).resolve().parents[1]


def coco_usage(captions, batch_size: int):
    """{(mode, rule): summed usage} for the captions packed with their own spaCy concepts."""
    import open_clip

    from open_clip_c2lip.concepts import extract_concepts
    from open_clip_c2lip.packing import TextPacker

    tokenizer = open_clip.get_tokenizer("C2LIP-Tiny")
    packer = TextPacker(tokenizer, max_concepts=8, log_every=0)
    cleaned = [tokenizer.clean_fn(c) for c in captions]
    concepts = extract_concepts(cleaned, clean=None)
    texts = packer(list(zip(captions, concepts)))
    totals = {}
    for mode in ("text", "span"):
        for rule in ("negative", "ignore"):
            total = torch.zeros(len(CONCEPT_USAGE_KEYS), dtype=torch.long)
            for start in range(0, texts.shape[0] - batch_size + 1, batch_size):
                caption_ids, concept_ids, spans = unpack_texts(texts[start:start + batch_size])
                mask = concept_ids.ne(0).any(-1) if mode == "text" else spans.any(-1)
                has_negative = torch.ones_like(mask)
                if rule == "ignore":
                    identities = concept_identities(concept_ids)
                    has_negative = images_holding(identities)[identities.clamp_min(0)] < batch_size
                total += concept_usage(mask, has_negative, caption_ids, concept_ids)
            totals[(mode, rule)] = dict(zip(CONCEPT_USAGE_KEYS, total.tolist()))
    return totals, packer.stats


def cost(repeats: int):
    """Median seconds of (loss forward + backward, the usage count alone) for each rule."""
    g = torch.Generator().manual_seed(0)
    batch, slots, used, tokens, dim, length = 96, 8, 3, 196, 768, 64

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g), dim=-1)

    mask = torch.zeros(batch, slots, dtype=torch.bool)
    mask[:, :used] = True
    ids = torch.randint(1, 50, (batch, slots, 1), generator=g).expand(batch, slots, length) * mask.unsqueeze(-1)
    captions = torch.randint(1, 50, (batch, length), generator=g)
    inputs = dict(image_features=unit(batch, dim), text_features=unit(batch, dim), image_tokens=unit(batch, tokens, dim),
                  concept_features=unit(batch, slots, dim), concept_mask=mask, concept_ids=ids.contiguous(),
                  caption_ids=captions, logit_scale=torch.tensor(10.0), logit_bias=torch.tensor(-10.0))
    results = {}
    for rule in ("negative", "ignore"):
        loss_fn = C2LIPLoss(duplicate_concepts=rule)
        loss_times, count_times = [], []
        for index in range(repeats + 1):
            leaves = {k: (v.clone().requires_grad_() if v.is_floating_point() else v) for k, v in inputs.items()}
            start = time.perf_counter()
            loss_fn(**leaves).backward()
            loss_time = time.perf_counter() - start
            identities = concept_identities(ids)  # the loss computes these anyway for 'ignore'
            start = time.perf_counter()
            has_negative = torch.ones_like(mask)
            if rule == "ignore":
                has_negative = images_holding(identities)[identities.clamp_min(0)] < batch
            concept_usage(mask, has_negative, captions, ids)
            count_time = time.perf_counter() - start
            if index:
                loss_times.append(loss_time)
                count_times.append(count_time)
        results[rule] = (statistics.median(loss_times), statistics.median(count_times))
    return results


def main() -> None:
    data = Path(os.environ.get("C2LIP_TEST_DATA", REPO.parent / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", default=str(data / "coco_captions_val2017.json"))
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "concept_usage.md"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    annotations = json.loads(Path(args.captions).read_text())["annotations"]
    captions = [a["caption"] for a in annotations]
    usage, stats = coco_usage(captions, args.batch_size)
    timing = cost(args.repeats)
    lines = [
        "# Concept usage on real captions, and the cost of counting it",
        "",
        f"`OMP_NUM_THREADS=1 python scripts/bench_concept_usage.py` — {len(captions)} COCO val2017 captions with "
        f"their own spaCy concepts, packed with C2LIP-Tiny's tokenizer (CLIP BPE, context 32), P = 8, batches of "
        f"{args.batch_size} ({len(captions) // args.batch_size} full batches); `C2LIPLoss.last_concept_usage` summed.",
        "",
        f"Machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, load average "
        f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())} (1 / 5 / 15 min) at the end.",
        "",
        "| concept mode | duplicate rule | samples | without a usable concept | share | no concept | "
        "whole-caption concepts | concepts without a negative | usable / valid concepts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (mode, rule), u in usage.items():
        without = u["samples"] - u["samples_with_usable_concept"]
        lines.append(f"| {mode} | {rule} | {u['samples']} | {without} | {100 * without / u['samples']:.3f} % | "
                     f"{u['samples_without_concept']} | {u['whole_caption_concepts']} | "
                     f"{u['concepts_without_negative']} | {u['usable_concepts']} / {u['concepts']} |")
    lines += ["", "Packer counters: " + ", ".join(f"{k}={v}" for k, v in stats.items() if v), "",
              f"Cost, fp32 CPU, M = 96, P = 8 (3 used), T = 196, D = 768, L = 64, median of {args.repeats}:", "",
              "| rule | loss forward + backward (s) | usage count (ms) | count / loss |", "|---|---|---|---|"]
    for rule, (loss_time, count_time) in timing.items():
        lines.append(f"| {rule} | {loss_time:.3f} | {1000 * count_time:.3f} | {count_time / loss_time:.2e} |")
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
