"""Compositionality evaluation suite: the vl_compo study's benchmarks and SugarCrepe++, plus clip_benchmark zero-shot.

Reads the benchmarks' official files from local folders (never downloads) under one ``--data-root``::

    val2017/                                    COCO 2017 val images (SugarCrepe, SugarCrepe++)
    sugarcrepe/<split>.json                     RAIVNLab/sugar-crepe data/*.json
    sugarcrepe_pp/<split>.json                  Sri-Harsha/scpp data/*.json
    aro_vgr/visual_genome_relation.json + aro_vgr/images/
    aro_vga/visual_genome_attribution.json + aro_vga/images/
    winoground/examples.jsonl + winoground/images/
    aro_coco_order/coco_karpathy_test.json + aro_coco_order/val2014/
    aro_flickr_order/flickr30k_test.json + aro_flickr_order/flickr30k-images/
    valse/<piece>.json + valse/images/            Heidelberg-NLP/VALSE data/*.json
    imagecode/valid_data.json + imagecode/image-sets/<set>/img<X>.jpg
    vl_checklist/{corpus/v1/, data/, vg/, hake/, swig/}   om-ai-lab/VL-CheckList + its image roots
    whatsup/<6 JSONs> + whatsup/{controlled_images, controlled_clevr, val2017, vg_images}/
    colorswap/test.json + colorswap/images/      ColorSwap test split (colorswap.py)
    crepe/prod_hard_negatives/<type>/*.csv + crepe/VG_100K{,_2}/     CREPE productivity (crepe.py)
    eqben/ann_json_finegrained_random.json + eqben/images/           EqBen (eqben.py)
    mmvp_vlm/Questions.csv + mmvp_vlm/MLLM_VLM Images/               MMVP-VLM (mmvp_vlm.py)
    svo_probes/svo_probes.csv + svo_probes/images/                   SVO-Probes (svo_probes.py)

Each benchmark module's docstring gives its official protocol, tie rule and summary; ``report``
writes a row in the vl_compo study's CSV format and its comparison figure, ``zeroshot`` runs
clip_benchmark's zero-shot classification and retrieval on the same model.

Every distinct image (with its crop box) and every distinct caption is encoded once across all
requested benchmarks; scores are cosine similarities of L2-normalized features. Each benchmark
counts an exact tie as its official code does and reports how many there were (``ties``): wrong
where the code compares strictly (``>``: SugarCrepe(++), ARO VG-R / VG-A, Winoground, VALSE,
VL-CheckList), correct where it takes ``argmax`` with the answer listed first (ARO order sets,
What'sUp), and for ImageCoDe the first of the tied images in frame order wins.

Output (values are fractions in [0, 1], ``n`` counts items)::

    {"<benchmark>": {"<split>": {"<metric>": value, "n": items}, "_average": {...}}}

- ``sugarcrepe``: ``acc`` per split; ``_average`` has ``micro`` (all items pooled), ``macro`` (mean
  of split accuracies) and ``add`` / ``replace`` / ``swap``, each the *micro* average over the
  items of that category's splits (the SugarCrepe authors' tables use micro averages).
- ``sugarcrepe_pp``: ``itt`` and ``tot`` per split; ``_average`` holds their macro averages
  (``itt``, ``tot``) and micro averages (``itt_micro``, ``tot_micro``).
- ``aro_vgr`` / ``aro_vga``: ``acc`` per relation / attribute pair (``attr0_attr1``) on the image
  cropped to the item's bbox. ``_average`` follows the published protocol (the ARO authors'
  replication notebook): ``acc`` is the macro mean over splits, ``acc_micro`` the pooled items of
  the same splits, ``n`` their items. VG-R leaves out the authors' fixed list of 157 relations
  ("by", "near", "next to", "with", ...; ``aro_vgr_excluded_relations.json``) from those and also
  reports ``acc_all_relations`` (macro over every relation) with ``n_all_relations``. VG-A leaves
  out attribute pairs with fewer than 25 items (``VG_Attribution.evaluate_scores``); VG-R keeps
  relations of any size. ``--aro-min-samples`` sets that threshold for both (dropped splits are
  counted and logged).
- ``winoground``: ``text``, ``image``, ``group`` per ``collapsed_tag`` (``all`` without tags);
  ``_average`` is over all items (the official Winoground scores).
- ``aro_coco_order`` / ``aro_flickr_order``: ``acc`` (Precision@1 among the caption and its four
  seeded word-order perturbations) on the Karpathy ``test`` split.
- ``valse``: ``acc`` per piece over its validated items; ``_average.acc`` is the mean over the seven
  phenomena (pieces of one phenomenon averaged first).
- ``imagecode``: ``acc`` for ``static`` and ``videos``; ``_average`` is the micro over both.
- ``vl_checklist``: ``acc`` per type (``Attribute_color``, ...), the mean over its corpora of the
  first 1000 items with an image; ``_average.acc`` is the mean of the Object, Attribute and
  Relation means.
- ``whatsup``: ``acc`` per subset; ``_average.acc`` is their mean.

A partial data root is fine: ``all`` (and a benchmark without a split list) evaluates what is
present, logs what is absent and lists it under a top-level ``"_skipped": {"<benchmark>":
["<absent annotation file>", ...]}``; a benchmark named explicitly, or a split given explicitly,
that is absent is an error, and so is a request of which nothing is present.

CLI: ``python -m open_clip_c2lip.eval --model NAME --pretrained FILE --benchmark all
--data-root DIR --output results.json``.

One module per benchmark (``sugarcrepe``, ``sugarcrepe_pp``, ``aro``, ``aro_order``, ``winoground``,
``valse``, ``imagecode``, ``vl_checklist``, ``whatsup``), each
registering its loader in the shared core (``core.BENCHMARKS``); ``encode`` computes features,
``suite`` runs benchmarks, ``cli`` is the command line. The names below are the public API.
"""
from ..loading import (SIGLIP_PREPROCESS, add_model_args, is_plugin_model, load_model, model_kwargs,
                       plugin_entry, plugin_preprocess_cfg, resolve_preprocess_cfg, tag_preprocess_cfg)
from .core import (BENCHMARK_FILES, BENCHMARKS, IMAGE_READERS, ImageRef, Scorer, Vocabulary, list_benchmarks,
                   register_benchmark, selection_correct)
from .encode import PRECISIONS, autocast, encode_images, encode_texts
# benchmark modules register themselves on import, in this order (the order of results)
from .sugarcrepe import SUGARCREPE_SPLITS, load_sugarcrepe
from .sugarcrepe_pp import SUGARCREPE_PP_SPLITS, load_sugarcrepe_pp, sugarcrepe_pp_correct
from .aro import load_aro_vga, load_aro_vgr
from .aro_order import OrderPerturber, load_aro_coco_order, load_aro_flickr_order, pre_caption
from .winoground import load_winoground, winoground_correct
from .valse import VALSE_PHENOMENA, VALSE_PIECES, load_valse
from .imagecode import load_imagecode
from .vl_checklist import VL_CHECKLIST_CORPORA, VL_CHECKLIST_TYPES, load_vl_checklist
from .whatsup import WHATSUP_SUBSETS, load_whatsup
from .colorswap import load_colorswap
from .crepe import CREPE_TYPES, load_crepe
from .eqben import load_eqben
from .mmvp_vlm import load_mmvp_vlm
from .svo_probes import load_svo_probes
from .suite import evaluate, expand_benchmarks, format_markdown, plan_benchmarks
from .zeroshot import run_clip_benchmark

# Imported on first use: ``python -m open_clip_c2lip.eval.report`` runs ``report`` as __main__ after
# importing this package, and runpy warns ("found in sys.modules ... unpredictable behaviour") when
# the package has already imported it (``cli`` imports ``report``).
_LAZY = {"compare_figure": "report", "vl_compo_row": "report", "atomic_write_text": "cli", "main": "cli",
         "parse_args": "cli"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
