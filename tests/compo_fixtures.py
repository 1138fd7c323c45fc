"""Tiny roots in the official layouts of ColorSwap, CREPE, EqBen, MMVP-VLM and SVO-Probes: items
written here in each release's schema (not copied from the releases), stand-in images from
``eval_fixtures.block_image``, and deliberate exact ties (the same image file or caption on both
sides of a comparison)."""
import ast
import csv
from pathlib import Path

import numpy as np

from eval_fixtures import block_image, write_json


def write_colorswap(root: Path):
    folder = root / "colorswap"
    examples = [
        ("a red cup on a blue table", "a blue cup on a red table"),
        ("someone holding a yellow umbrella wearing a white dress",
         "someone holding a white umbrella wearing a yellow dress"),
        ("a green car next to an orange truck", "an orange car next to a green truck"),
        ("a black cat on a white sofa", "a white cat on a black sofa"),
        ("a pink flower in a purple vase", "a pink flower in a purple vase"),  # same caption: text ties
        ("a brown dog with a grey ball", "a grey dog with a brown ball"),  # same image twice: image ties
    ]
    items = []
    for i, (c1, c2) in enumerate(examples):
        for k in (1, 2):
            block_image(folder / "images" / f"img_{i}_{k}.png", seed=500 + 2 * i + k)
        image_2 = f"images/img_{i}_1.png" if i == 5 else f"images/img_{i}_2.png"
        items.append({"id": i, "caption_1": c1, "caption_2": c2, "image_1": f"images/img_{i}_1.png",
                      "image_2": image_2, "image_source": "midjourney", "caption_source": "human"})
    write_json(folder / "test.json", items)
    # the training split sits next to it in the release; it is not part of the benchmark
    write_json(folder / "train.json", [dict(items[0], id=99)])


MMVP_TYPES = ("Orientation", "Presence", "State")


def write_mmvp(root: Path, pairs: int = 33, folder_name: str = "MLLM_VLM Images", swap_pair: int = 16,
               tie_pair: int = 31):
    """``pairs`` pairs (15 per category: with 33, two full categories and three pairs of a third);
    pair ``swap_pair`` lists its even qid first, pair ``tie_pair`` has two identical images."""
    folder = root / "mmvp_vlm"
    words = ["left", "right", "up", "down", "open", "closed", "one", "two", "red", "blue", "near", "far"]
    lines = [["Question ID", "Type", "Statement"]]
    for p in range(pairs):
        kind = MMVP_TYPES[min(p // 15, len(MMVP_TYPES) - 1)]
        qids = [2 * p + 1, 2 * p + 2]
        if p == swap_pair:
            qids = qids[::-1]
        for j, qid in enumerate(qids):
            statement = f"the {words[(p + j) % len(words)]} side of object {p} is {words[(3 * p + j) % 7]}"
            lines.append([str(qid), kind, statement])
            block_image(folder / folder_name / kind / f"{qid}.jpg", seed=700 + (2 * p if p == tie_pair else qid))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "Questions.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(lines)


EQBEN_SAMPLES = {"eqbenag": 3, "eqbenyoucook2": 2, "eqbengebc": 2, "eqbenkubric_loc": 2, "eqbenkubric_attr": 2,
                 "eqbenkubric_cnt": 3, "eqbensd": 2}


def write_eqben(root: Path):
    """Every sub-dataset, entries shuffled; YouCook2 frames as BGR .npy, one Kubric image stored as
    .jpg under a .png name (the light release), one sample with equal captions (text ties)."""
    folder = root / "eqben"
    rng = np.random.default_rng(3)
    entries, sample_cnt = [], 0
    for dataset, count in EQBEN_SAMPLES.items():
        for s in range(count):
            relative = []
            for j in (0, 1):
                if dataset == "eqbenyoucook2":
                    name = f"{dataset}/video_{s}/frame_{j}.npy"
                    rgb = np.kron(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), np.ones((10, 10, 1), np.uint8))
                    (folder / "images" / name).parent.mkdir(parents=True, exist_ok=True)
                    np.save(folder / "images" / name, rgb[:, :, ::-1])  # stored BGR
                else:
                    name = f"{dataset}/scene_{s}/img_{j}.png"
                    stored = folder / "images" / name
                    if dataset == "eqbenkubric_attr" and s == 0 and j == 1:
                        stored = stored.with_suffix(".jpg")  # light release: jpg on disk, png in the annotation
                    block_image(stored, seed=900 + 10 * sample_cnt + j)
                relative.append(name)
            captions = [f"{dataset} scene {s} shows {w} first" for w in ("a person", "a dog")]
            if dataset == "eqbensd" and s == 1:
                captions[1] = captions[0]
            for c in (0, 1):
                for j in (0, 1):
                    entries.append({"image": relative[j], "caption": captions[c],
                                    "private_info": {"dataset": dataset, "name": f"c{c}i{j}",
                                                     "sample_cnt": sample_cnt}})
            sample_cnt += 1
    order = rng.permutation(len(entries))
    write_json(folder / "ann_json_finegrained_random.json", [entries[k] for k in order])


CREPE_TYPES = ("atom", "swap", "negate")


def write_crepe(root: Path, types=CREPE_TYPES):
    """Each type x complexity 4..12 with one or two rows; images split over VG_100K / VG_100K_2;
    some rows have a hard negative equal to the caption (a tie, correct under CREPE's rule) and one
    has fewer negatives than the others."""
    folder = root / "crepe"
    for k in range(6):
        block_image(folder / ("VG_100K" if k % 2 == 0 else "VG_100K_2") / f"{2400000 + k}.jpg", seed=1100 + k,
                    size=(120, 90))
    words = ["man", "horse", "table", "kite", "tree", "shirt", "road", "sky", "dog", "grass"]
    for t_index, negative_type in enumerate(types):
        for complexity in range(4, 13):
            rows = []
            for r in range(1 + (complexity % 2)):
                seed = 31 * t_index + 7 * complexity + r
                caption = f"a {words[seed % 10]} with a {words[(seed + 3) % 10]} near a {words[(seed + 5) % 10]}"
                negatives = [f"a {words[(seed + d) % 10]} with a {words[(seed + 2 * d) % 10]} near a "
                             f"{words[(seed + 3 * d + 1) % 10]}" for d in range(1, 6)]
                if complexity == 6 and r == 0:
                    negatives[2] = caption  # exact tie with the best other option
                if complexity == 9:
                    negatives = negatives[:3]
                image_id = 2400000 + (seed % 6)
                rows.append({"image_id": image_id, "x": 5 + seed % 30, "y": 3 + seed % 20, "width": 60 + seed % 25,
                             "height": 45 + seed % 15, "caption": caption, "hard_negs": repr(negatives)})
            path = folder / "prod_hard_negatives" / negative_type / \
                f"prod_vg_hard_negs_{negative_type}_complexity_{complexity}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=["", "image_id", "x", "y", "width", "height", "caption",
                                                       "hard_negs"])
                writer.writeheader()
                writer.writerows({"": i, **row} for i, row in enumerate(rows))


def read_crepe_rows(root: Path, negative_type: str, complexity: int):
    path = root / "crepe" / "prod_hard_negatives" / negative_type / \
        f"prod_vg_hard_negs_{negative_type}_complexity_{complexity}.csv"
    with open(path, newline="", encoding="utf-8") as f:
        return [dict(row, hard_negs=ast.literal_eval(row["hard_negs"])) for row in csv.DictReader(f)]


SVO_COLUMNS = ["sentence", "pos_triplet", "neg_triplet", "subj_neg", "verb_neg", "obj_neg", "pos_url", "neg_url",
               "pos_image_id", "neg_image_id"]


def write_svo(root: Path):
    """Rows of each negative type, one with two types (in no subset), two whose image is absent
    (dropped) and one with the same image on both sides (a tie, wrong)."""
    folder = root / "svo_probes"
    for image_id in range(10, 22):
        suffix = ".png" if image_id % 3 == 0 else ".jpg"
        block_image(folder / "images" / f"{image_id}{suffix}", seed=1300 + image_id)
    rows = [
        ("a man rides a horse", "man,ride,horse", "woman,ride,horse", (1, 0, 0), 10, 11),
        ("a child eats an apple", "child,eat,apple", "dog,eat,apple", (1, 0, 0), 12, 13),
        ("a woman reads a book", "woman,read,book", "woman,write,book", (0, 1, 0), 14, 15),
        ("a dog catches a ball", "dog,catch,ball", "dog,throw,ball", (0, 1, 0), 16, 17),
        ("a cat chases a mouse", "cat,chase,mouse", "cat,chase,bird", (0, 0, 1), 18, 19),
        ("a girl kicks a ball", "girl,kick,ball", "girl,kick,can", (0, 0, 1), 20, 21),
        ("a boy throws a frisbee", "boy,throw,frisbee", "boy,throw,stone", (0, 0, 1), 10, 14),
        ("a man walks a dog", "man,walk,dog", "man,walk,cat", (0, 0, 1), 12, 12),  # same image: tie
        ("a person pets a dog", "person,pet,dog", "cat,feed,dog", (1, 1, 0), 11, 13),  # two types: no subset
        ("a bird eats seeds", "bird,eat,seed", "bird,eat,worm", (0, 0, 1), 16, 99),  # image 99 absent: dropped
        ("a man cooks food", "man,cook,food", "woman,cook,food", (1, 0, 0), 98, 15),  # image 98 absent: dropped
        ("a horse jumps a fence", "horse,jump,fence", "horse,eat,fence", (0, 1, 0), 18, 20),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "svo_probes.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SVO_COLUMNS)
        for sentence, pos_t, neg_t, flags, pos, neg in rows:
            writer.writerow([sentence, pos_t, neg_t, *[str(bool(x)) for x in flags],
                             f"http://example.com/{pos}.jpg", f"http://example.com/{neg}.jpg", pos, neg])
    return rows


def svo_image(root: Path, image_id) -> Path:
    for suffix in (".jpg", ".png"):
        path = root / "svo_probes" / "images" / f"{image_id}{suffix}"
        if path.is_file():
            return path
    return None


def write_all(root: Path):
    write_colorswap(root)
    write_mmvp(root)
    write_eqben(root)
    write_crepe(root)
    write_svo(root)
    return root
