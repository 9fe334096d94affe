"""The dataset card: ``README.md`` (with a Hugging Face dataset-card header) and ``card.html``.

Both show the same statistics: counts per variant and split, the size mix by COCO area thresholds
beside the paper's, an object-position heat map (paper Fig. 7B: masks resized to 320×200 and
summed), instances per scene cluster, expression length and vocabulary, review statistics, a grid
of (composite, ground truth) pairs and a validation section. Plots are drawn with matplotlib's Agg
canvas (no pyplot state) and saved without a software/date stamp, so the same release gives the
same bytes.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comcoco.io import write_bytes_atomic, write_text_atomic
from comcoco.matching.clusters import cluster_name
from comcoco.release.export import GT_DIR, IMAGES_DIR, MASKS_DIR, VARIANTS, ReleaseEntry, entry_annotation
from comcoco.release.manifest import split_ordered
from comcoco.sources.refer import normalize_sentence

CARD_DIR = "card"
SMALL, MEDIUM = 32 * 32, 96 * 96  # COCO area thresholds
PAPER_SIZE_MIX = {"small": 11.0, "medium": 53.0, "large": 36.0}  # ComCOCO, paper Sec. 3.3
PAPER_COUNTS = {"train": 20324, "val": 1843, "test": 1784}
HEATMAP_SIZE = (320, 200)  # width, height, as in the paper's Fig. 7
_CONFIG_NAMES = {"ComCOCO": "ComCOCO", "ComCOCO+": "ComCOCO_plus"}


# --- statistics -------------------------------------------------------------------------------------


def size_class(area: float) -> str:
    return "small" if area < SMALL else "medium" if area < MEDIUM else "large"


def card_statistics(release: Path, entries: Sequence[ReleaseEntry]) -> dict[str, Any]:
    """Everything the card reports, computed from the release's entries and mask files."""
    sizes = Counter(size_class(entry_annotation(e).area) for e in entries)
    n = max(1, len(entries))
    heat = np.zeros((HEATMAP_SIZE[1], HEATMAP_SIZE[0]), dtype=np.float64)
    for e in entries:
        m = cv2.imread(str(release / MASKS_DIR / e.mask_file_name), cv2.IMREAD_GRAYSCALE)
        if m is not None:
            heat += cv2.resize((m > 127).astype(np.float32), HEATMAP_SIZE, interpolation=cv2.INTER_AREA)
    clusters = Counter(cluster_name(e.cluster) for e in entries)
    expr: dict[str, Any] = {}
    for variant in VARIANTS:
        lengths, vocab = [], set()
        for e in entries:
            for x in e.expressions_for(variant):
                _, tokens = normalize_sentence(x.raw)
                lengths.append(len(tokens))
                vocab.update(tokens)
        expr[variant] = {
            "expressions": len(lengths),
            "mean_words": round(float(np.mean(lengths)), 2) if lengths else 0.0,
            "max_words": max(lengths, default=0),
            "vocabulary": len(vocab),
            "lengths": lengths,
        }
    return {
        "size_mix": {k: round(100.0 * sizes.get(k, 0) / n, 1) for k in ("small", "medium", "large")},
        "size_counts": {k: sizes.get(k, 0) for k in ("small", "medium", "large")},
        "heatmap": heat,
        "clusters": dict(sorted(clusters.items(), key=lambda kv: (-kv[1], kv[0]))),
        "expressions": expr,
    }


# --- plots ------------------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> None:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    write_bytes_atomic(path, buf.getvalue())


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def plot_size_mix(stats: dict[str, Any], path: Path) -> None:
    fig = _figure(5, 3)
    ax = fig.add_subplot()
    labels = list(PAPER_SIZE_MIX)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [stats["size_mix"][k] for k in labels], 0.4, label="this release")
    ax.bar(x + 0.2, [PAPER_SIZE_MIX[k] for k in labels], 0.4, label="paper (ComCOCO)")
    ax.set_xticks(x, labels)
    ax.set_ylabel("% of objects")
    ax.set_title("Object size (COCO area thresholds)")
    ax.legend()
    _save(fig, path)


def plot_heatmap(stats: dict[str, Any], path: Path) -> None:
    fig = _figure(5, 3.4)
    ax = fig.add_subplot()
    heat = stats["heatmap"]
    im = ax.imshow(heat / max(float(heat.max()), 1e-9), cmap="inferno", vmin=0, vmax=1)
    ax.set_title("Object position (masks resized to 320×200)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, shrink=0.8)
    _save(fig, path)


def plot_clusters(stats: dict[str, Any], path: Path) -> None:
    items = list(stats["clusters"].items())
    fig = _figure(5, max(2.0, 0.3 * len(items) + 1))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1])
    ax.set_xlabel("objects")
    ax.set_title("Instances per scene cluster")
    _save(fig, path)


def plot_lengths(stats: dict[str, Any], path: Path) -> None:
    fig = _figure(5, 3)
    ax = fig.add_subplot()
    top = max([max(v["lengths"], default=1) for v in stats["expressions"].values()] + [1])
    x = np.arange(1, top + 1)
    width = 0.8 / len(VARIANTS)
    for i, variant in enumerate(VARIANTS):
        counts = np.bincount(stats["expressions"][variant]["lengths"], minlength=top + 1)[1:]
        ax.bar(x + (i - (len(VARIANTS) - 1) / 2) * width, counts, width, label=variant)
    ax.set_xlabel("words per expression")
    ax.set_ylabel("expressions")
    ax.set_title("Expression length")
    ax.legend()
    _save(fig, path)


def pair_grid(release: Path, entries: Sequence[ReleaseEntry], path: Path, pairs: int = 8,
              height: int = 160) -> int:
    """(composite with the object outlined, ground truth) side by side, two pairs per row."""
    chosen = sorted(entries, key=lambda e: e.ref_id)
    if len(chosen) > pairs:
        step = len(chosen) / pairs
        chosen = [chosen[int(i * step)] for i in range(pairs)]
    cells = []
    for e in chosen:
        comp = cv2.imread(str(release / IMAGES_DIR / e.image_file_name), cv2.IMREAD_COLOR)
        gt = cv2.imread(str(release / GT_DIR / e.gt_file_name), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(release / MASKS_DIR / e.mask_file_name), cv2.IMREAD_GRAYSCALE)
        if comp is None or gt is None or mask is None:
            continue
        contours, _ = cv2.findContours((mask > 127).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        comp = comp.copy()
        cv2.drawContours(comp, contours, -1, (0, 0, 255), 2)
        w = max(1, round(comp.shape[1] * height / comp.shape[0]))
        pair = np.concatenate([cv2.resize(comp, (w, height), interpolation=cv2.INTER_AREA),
                               np.full((height, 4, 3), 255, np.uint8),
                               cv2.resize(gt, (w, height), interpolation=cv2.INTER_AREA)], axis=1)
        cells.append(pair)
    if not cells:
        cells = [np.full((height, height, 3), 255, np.uint8)]
    width = max(c.shape[1] for c in cells)
    cells = [np.pad(c, ((0, 0), (0, width - c.shape[1]), (0, 0)), constant_values=255) for c in cells]
    if len(cells) % 2:
        cells.append(np.full_like(cells[0], 255))
    rows = [np.concatenate([cells[i], np.full((height, 12, 3), 255, np.uint8), cells[i + 1]], axis=1)
            for i in range(0, len(cells), 2)]
    gap = np.full((8, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([x for r in rows for x in (r, gap)][:-1], axis=0)
    ok, buf = cv2.imencode(".png", grid, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise ValueError("could not encode the pair grid")
    write_bytes_atomic(path, buf.tobytes())
    return len(chosen)


# --- text -------------------------------------------------------------------------------------------


def _size_category(n: int) -> str:
    if n < 1000:
        return "n<1K"
    if n < 10_000:
        return "1K<n<10K"
    if n < 100_000:
        return "10K<n<100K"
    return "100K<n<1M"


def _hf_header(export: dict[str, Any], total: int) -> str:
    lines = ["---", "pretty_name: ComCOCO", "language:", "- en", "license: other",
             "license_name: coco-terms-of-use", "task_categories:", "- image-to-image", "- image-segmentation",
             "tags:", "- referring-object-removal", "- referring-expressions", "- refcoco",
             "size_categories:", f"- {_size_category(total)}", "configs:"]
    for variant in VARIANTS:
        lines.append(f"- config_name: {_CONFIG_NAMES[variant]}")
        if variant == "ComCOCO":
            lines.append("  default: true")
        lines.append("  data_files:")
        splits = sorted({Path(p).name.split("-")[0] for p in export["variants"][variant]["parquet"]})
        for split in splits:
            lines += [f"  - split: {split}", f"    path: parquet/{variant}/{split}-*.parquet"]
    lines.append("---")
    return "\n".join(lines) + "\n"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[str, str]:
    """The same table as Markdown and as HTML."""
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    h = ["<table><thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in headers) + "</tr></thead><tbody>"]
    h += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows]
    h.append("</tbody></table>")
    return "\n".join(md), "\n".join(h)


_PROFILE_TEXT = {
    "robust": "Built with the **robust** profile: up to three targets per composite, told apart only by their "
              "expressions; each pasted with its shadow, a refined matte and the scene's noise, blur and JPEG "
              "grid. A removal model should inpaint the effect mask (object and shadow), not only the mask.",
    "paper": "Built with the **paper** profile (the ComCOCO paper's recipe): one object per composite, pasted as "
             "cut, without shadow or camera matching. Models can find such pastes without reading the "
             "expression; see the audit.",
}


def audit_section(audit: dict[str, Any] | None, profile: str,
                  decoys: dict[str, int] | None = None) -> tuple[str, str]:
    """The card's artifact-audit section (markdown, html): how well pasted objects can be told from the
    scenes' own, per cue family, and the profile the release was built with."""
    intro = _PROFILE_TEXT.get(profile, f"Built with the {profile} profile.")
    if decoys and decoys.get("decoys"):
        intro += (f" The composites hold {decoys['decoys']} decoys (in {decoys['composites_with_decoys']} "
                  "composites): objects from the targets' own photos, pasted alike and never referred to, so "
                  "finding the pasted objects is not finding the target (each sample's `decoy_ann_ids`).")
    if not audit:
        text = "No artifact audit was run for this release."
        return f"{intro}\n\n{text}", f"<p>{html.escape(intro)}</p><p>{text}</p>"
    ci = audit.get("ci")
    auc = "n/a" if audit.get("auc") is None else f"{audit['auc']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    rows = [["all cues", auc]] + [[k, "n/a" if v is None else f"{v:.2f}"] for k, v in sorted(audit.get("cues", {}).items())]
    md, htm = _table(["cue family", "ROC AUC (0.5 = undetectable)"], rows)
    note = (f"{audit.get('verdict', '')} — {audit.get('n_pasted', 0)} pasted and {audit.get('n_native', 0)} "
            "size-matched native objects, folds grouped by background (`comcoco audit RELEASE`).")
    return f"{intro}\n\n{md}\n\n{note}", f"<p>{html.escape(intro)}</p>{htm}<p>{html.escape(note)}</p>"


def validation_section(validation: dict[str, Any] | None) -> tuple[str, str]:
    """The card's validation section (markdown, html) for a validation result, or its absence."""
    if not validation:
        text = "No validation was run for this release."
        return text, f"<p>{text}</p>"
    metrics = validation.get("metrics", {})
    md, htm = _table(["metric", "value"], list(sorted(metrics.items())))
    notes = str(validation.get("notes", ""))
    title = str(validation.get("title", "Validation"))
    return (f"**{title}**\n\n{md}\n\n{notes}",
            f"<p><b>{html.escape(title)}</b></p>{htm}<p>{html.escape(notes)}</p>")


_IMAGES = {
    "size_mix": "size_mix.png", "heatmap": "heatmap.png", "clusters": "clusters.png",
    "lengths": "expression_length.png", "pairs": "pairs.png",
}


def _img(key: str, alt: str) -> tuple[str, str]:
    rel = f"{CARD_DIR}/{_IMAGES[key]}"
    return f"![{alt}]({rel})", f'<img src="{rel}" alt="{html.escape(alt)}">'


def _sections(version: str, stats: dict[str, Any], selection: dict[str, Any], export: dict[str, Any],
              validation: dict[str, Any] | None, shown: int) -> list[tuple[str, str, str]]:
    """The card's sections in order, each as (title, markdown, html)."""
    sections: list[tuple[str, str, str]] = []
    add = lambda title, md, htm: sections.append((title, md, htm))  # noqa: E731
    rows = []
    for variant in VARIANTS:
        for split, c in split_ordered(export["variants"][variant]["counts"]):
            rows.append([variant, split, c["samples"], c["expressions"], c["images"],
                         PAPER_COUNTS.get(split, "") if variant == "ComCOCO" else ""])
    md, htm = _table(["variant", "split", "samples (refs)", "expressions", "composites", "paper pairs"], rows)
    add("Counts", md + "\n\nSplits are leak-free: no COCO image (background or source of a pasted object) "
        "appears in two splits.", htm + "<p>Splits are leak-free: no COCO image (background or source of a "
        "pasted object) appears in two splits.</p>")

    size_rows = [[k, stats["size_counts"][k], f"{stats['size_mix'][k]} %", f"{PAPER_SIZE_MIX[k]:.0f} %"]
                 for k in PAPER_SIZE_MIX]
    md, htm = _table(["size (COCO area)", "objects", "this release", "paper"], size_rows)
    im_md, im_html = _img("size_mix", "size mix")
    add("Object sizes", f"{md}\n\n{im_md}", f"{htm}{im_html}")
    im_md, im_html = _img("heatmap", "object position heat map")
    add("Object positions", im_md, im_html)
    md, htm = _table(["cluster", "objects"], list(stats["clusters"].items()))
    im_md, im_html = _img("clusters", "instances per cluster")
    add("Instances per cluster", f"{md}\n\n{im_md}", f"{htm}{im_html}")
    ex = stats["expressions"]
    md, htm = _table(["variant", "expressions", "mean words", "max words", "vocabulary"],
                     [[v, ex[v]["expressions"], ex[v]["mean_words"], ex[v]["max_words"], ex[v]["vocabulary"]]
                      for v in VARIANTS])
    im_md, im_html = _img("lengths", "expression length")
    add("Expressions", f"{md}\n\n{im_md}", f"{htm}{im_html}")
    rev = selection["review"]
    review_rows = [[k.replace("_", " "), v] for k, v in rev.items()]
    review_rows += [[f"left out: {k}", v] for k, v in selection["excluded"].items()]
    md, htm = _table(["review", "samples"], review_rows)
    note = (f"Unreviewed samples are {'included' if selection['unreviewed_policy'] == 'include' else 'excluded'} "
            "(release option `--unreviewed`). " + agreement_note(selection.get("agreement")))
    add("Review", f"{md}\n\n{note}", f"{htm}<p>{html.escape(note)}</p>")
    im_md, im_html = _img("pairs", "composite and ground-truth pairs")
    cap = f"{shown} (composite with the object outlined, ground truth) pairs."
    add("Examples", f"{im_md}\n\n{cap}", f"{im_html}<p>{html.escape(cap)}</p>")
    add("Validation", *validation_section(validation))
    usage = ("```python\nimport comcoco\nds = comcoco.load(\"path/to/comcoco-" + version
             + "\", variant=\"ComCOCO\", split=\"train\")\nrefer = comcoco.load_refer(\"path/to/comcoco-"
             + version + "\", variant=\"ComCOCO+\")\n```\n\nREFER layout: `ComCOCO/refs(unc).p`, "
             "`ComCOCO/instances.json` (and `ComCOCO+/`); image files under `images/`, ground truths under "
             "`gt/`, masks under `masks/`. Each ref has an extra key `comcoco` with provenance and its "
             "ground-truth and mask file names. Parquet: `parquet/<variant>/<split>-NNNNN.parquet`; "
             "instruction-editing pairs: `instruct/<variant>/<split>.jsonl`.")
    add("Loading", usage, "<pre>" + html.escape(usage) + "</pre>")
    return sections


def agreement_note(agreement: dict[str, Any] | None) -> str:
    """One sentence on inter-annotator agreement (placement review) for the card's Review section."""
    p = (agreement or {}).get("placement") or {}
    if not p.get("pairs"):
        return "No sample was answered by two annotators, so no inter-annotator agreement is reported."
    kappa = "n/a" if p["kappa"] is None else f"{p['kappa']:.2f}"
    iou = "n/a" if p["mean_box_iou"] is None else f"{p['mean_box_iou']:.2f}"
    return (f"Inter-annotator agreement on the {p['pairs']} samples two annotators answered: Cohen's kappa "
            f"{kappa} on accept / reject / adjust (observed agreement {p['observed']:.2f}); mean box IoU {iou} "
            f"over the {p['box_pairs']} pairs where both answers have a box.")


def write_card(release: Path, version: str, entries: Sequence[ReleaseEntry], selection: dict[str, Any],
               export: dict[str, Any], validation: dict[str, Any] | None, pairs: int = 8,
               audit: dict[str, Any] | None = None) -> list[str]:
    """Write the plots, ``README.md`` and ``card.html``; returns the files written (relative)."""
    release = Path(release)
    stats = card_statistics(release, entries)
    card = release / CARD_DIR
    card.mkdir(parents=True, exist_ok=True)
    plot_size_mix(stats, card / _IMAGES["size_mix"])
    plot_heatmap(stats, card / _IMAGES["heatmap"])
    plot_clusters(stats, card / _IMAGES["clusters"])
    plot_lengths(stats, card / _IMAGES["lengths"])
    shown = pair_grid(release, entries, card / _IMAGES["pairs"], pairs=pairs)
    sections = _sections(version, stats, selection, export, validation, shown)
    sections.insert(next(i for i, s in enumerate(sections) if s[0] == "Validation"),
                    ("Artifact audit", *audit_section(audit, selection.get("profile", "paper"), selection.get("decoys"))))

    total = sum(c["samples"] for c in export["variants"]["ComCOCO"]["counts"].values())
    intro = (f"ComCOCO {version}: referring object removal pairs. Each sample is a composite image with an "
             "object pasted from RefCOCO+ into another COCO image, the background without it (ground truth), "
             "the object's mask and the expressions that refer to it. ComCOCO has appearance expressions and "
             "spatial phrases; ComCOCO+ appearance expressions only.")
    readme = _hf_header(export, total) + f"\n# ComCOCO {version}\n\n{intro}\n"
    readme += "".join(f"\n## {t}\n\n{md}\n" for t, md, _ in sections)
    write_text_atomic(release / "README.md", readme)
    body = "".join(f"<section><h2>{html.escape(t)}</h2>{h}</section>\n" for t, _, h in sections)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>ComCOCO {html.escape(version)}</title><style>"
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em}"
        "img{max-width:100%;display:block;margin:.5em 0}pre{background:#f4f4f4;padding:1em}"
        f"</style></head><body><h1>ComCOCO {html.escape(version)}</h1><p>{html.escape(intro)}</p>\n"
        f"{body}</body></html>\n"
    )
    write_text_atomic(release / "card.html", page)
    stats_out = {k: v for k, v in stats.items() if k != "heatmap"}
    for v in stats_out["expressions"].values():
        v.pop("lengths")
    write_text_atomic(card / "statistics.json", json.dumps(stats_out, indent=2, sort_keys=True) + "\n")
    return ["README.md", "card.html", f"{CARD_DIR}/statistics.json"] + [f"{CARD_DIR}/{n}" for n in _IMAGES.values()]
