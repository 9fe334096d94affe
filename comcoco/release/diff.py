"""What changed between two releases: the configuration first, then every sample with its reasons.

Samples are matched by provenance (source ref, source annotation, background image). A sample is
changed when its split, category, expressions, files (composite, ground truth, mask), placement,
harmonization or review decision differ, and each change is named: ``split train → test``,
``expressions +"man on the left" -"guy"``, ``files: composite, ground truth``, ``placement box
[…] → […]``. A release whose samples all equal the previous release's has the same *data*, whatever
its configuration says (a split seed that moves nothing, say); the changelog and ``release`` say so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from comcoco.errors import ComcocoError

KeyT = tuple[int, int, int]
CONFIG_SECTIONS = ("release_config", "build_config", "source")
FILE_KINDS = ("composite", "ground truth", "mask")


class DiffError(ComcocoError):
    """A release folder cannot be compared (its refs are missing or unreadable)."""


def _load_refs(release: Path, variant: str = "ComCOCO") -> list[dict[str, Any]]:
    from comcoco.sources.refer import SourceError, load_plain_pickle

    path = release / variant / "refs(unc).p"
    if not path.is_file():
        raise DiffError(f"{path}: not found; {release} is not a comcoco release")
    try:
        return load_plain_pickle(path)
    except SourceError as exc:
        raise DiffError(str(exc)) from None


def sample_records(release: Path, files: dict[str, dict[str, Any]]) -> dict[KeyT, dict[str, Any]]:
    """Provenance key → what users get for that sample (files by content hash, not by name)."""
    out = {}
    for ref in _load_refs(release):
        meta = ref.get("comcoco") or {}
        try:
            key = (int(meta["fg_ref_id"]), int(meta["fg_ann_id"]), int(meta["bg_image_id"]))
        except (KeyError, TypeError, ValueError):
            raise DiffError(f"{release}/ComCOCO/refs(unc).p: ref {ref.get('ref_id')} has no comcoco "
                            "provenance; not a comcoco release") from None
        image = f"images/comcoco_{int(ref['image_id']):012d}."
        review = meta.get("review") or {}
        out[key] = {
            "sample_id": meta.get("sample_id"),
            "split": ref.get("split"),
            "category": ref.get("category_id"),
            "expressions": [s["raw"] for s in ref.get("sentences", [])],
            "files": {
                "composite": sorted(v["sha256"] for k, v in files.items() if k.startswith(image)),
                "ground truth": files.get(f"gt/{meta.get('gt_file_name')}", {}).get("sha256"),
                "mask": files.get(f"masks/{meta.get('mask_file_name')}", {}).get("sha256"),
            },
            "placement": meta.get("placement"),
            "harmonization": meta.get("filter_args"),
            "review": {k: review.get(k) for k in ("decision", "box")} if review else None,
        }
    return out


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)


def sample_changes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Each difference between two records of one sample, as a short phrase (empty when equal)."""
    out = []
    if a["split"] != b["split"]:
        out.append(f"split {a['split']} → {b['split']}")
    if a["category"] != b["category"]:
        out.append(f"category {a['category']} → {b['category']}")
    added = [e for e in b["expressions"] if e not in a["expressions"]]
    removed = [e for e in a["expressions"] if e not in b["expressions"]]
    if added or removed:
        out.append("expressions " + " ".join([f"+{json.dumps(e)}" for e in added] + [f"-{json.dumps(e)}" for e in removed]))
    elif a["expressions"] != b["expressions"]:
        out.append("expressions reordered")
    changed = [k for k in FILE_KINDS if a["files"].get(k) != b["files"].get(k)]
    if changed:
        out.append("files: " + ", ".join(changed))
    pa, pb = a.get("placement") or {}, b.get("placement") or {}
    moved = [f"{k} {_short(pa.get(k))} → {_short(pb.get(k))}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    if moved:
        out.append("placement " + ", ".join(moved))
    if a.get("harmonization") != b.get("harmonization"):
        out.append("harmonization filters changed")
    if a.get("review") != b.get("review"):
        da, db = (a.get("review") or {}).get("decision"), (b.get("review") or {}).get("decision")
        out.append(f"review {da or 'unreviewed'} → {db or 'unreviewed'}" if da != db else "review box changed")
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_changes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Differences of the configuration sections of two manifests: ``release_config.split_seed: 0 → 7``."""
    out = []
    for section in CONFIG_SECTIONS:
        fa, fb = _flatten(a.get(section) or {}, f"{section}."), _flatten(b.get(section) or {}, f"{section}.")
        out += [f"{k}: {_short(fa.get(k))} → {_short(fb.get(k))}" for k in sorted(set(fa) | set(fb))
                if fa.get(k) != fb.get(k)]
    return out


def _row(key: KeyT, sample_id: Any, reasons: list[str]) -> dict[str, Any]:
    return {"fg_ref_id": key[0], "fg_ann_id": key[1], "bg_image_id": key[2], "sample_id": sample_id,
            "reasons": reasons}


def diff_manifests(a: Path, ma: dict[str, Any], b: Path, mb: dict[str, Any]) -> dict[str, Any]:
    """The diff of two releases given their folders and manifests (``mb`` may describe a staged release)."""
    ra, rb = sample_records(a, ma["files"]), sample_records(b, mb["files"])
    counts_a, counts_b = ma["counts"]["per_split"], mb["counts"]["per_split"]
    deltas: dict[str, dict[str, dict[str, int]]] = {}
    for variant in sorted(set(counts_a) | set(counts_b)):
        ca, cb = counts_a.get(variant, {}), counts_b.get(variant, {})
        for split in sorted(set(ca) | set(cb)):
            x, y = ca.get(split, {}), cb.get(split, {})
            deltas.setdefault(variant, {})[split] = {k: y.get(k, 0) - x.get(k, 0)
                                                     for k in ("samples", "expressions", "images")}
    added = [_row(k, rb[k]["sample_id"], [f"new in {mb['version']}"]) for k in sorted(rb.keys() - ra.keys())]
    removed = [_row(k, ra[k]["sample_id"], [f"not in {mb['version']}"]) for k in sorted(ra.keys() - rb.keys())]
    changed, unchanged = [], 0
    for k in sorted(ra.keys() & rb.keys()):
        reasons = sample_changes(ra[k], rb[k])
        if reasons:
            changed.append(_row(k, rb[k]["sample_id"], reasons))
        else:
            unchanged += 1
    code = ([f"code_version: {ma.get('code_version')} → {mb.get('code_version')}"]
            if ma.get("code_version") != mb.get("code_version") else [])
    return {
        "a": ma["version"], "b": mb["version"],
        "config_changes": config_changes(ma, mb), "code_changes": code,
        "identical_data": not (added or removed or changed),
        "added": added, "removed": removed, "changed": changed, "unchanged": unchanged,
        "count_deltas": deltas,
    }


def diff_releases(a: str | os.PathLike[str], b: str | os.PathLike[str],
                  staged: dict[str, Any] | None = None) -> dict[str, Any]:
    """Configuration changes, samples added, removed and changed (each with its reasons) from ``a`` to ``b``.

    ``staged`` stands in for ``b``'s manifest while ``b`` is being built: ``version``, ``files``,
    ``counts`` and the configuration sections.
    """
    from comcoco.release.manifest import read_manifest

    a, b = Path(a), Path(b)
    return diff_manifests(a, read_manifest(a), b, staged if staged is not None else read_manifest(b))


def summary_line(d: dict[str, Any]) -> str:
    return (f"{len(d['added'])} added, {len(d['removed'])} removed, {len(d['changed'])} changed, "
            f"{d['unchanged']} unchanged")


def identical_note(d: dict[str, Any]) -> str:
    """The sentence a release says when its data equals the previous release's."""
    what = ("only the configuration differs (" + "; ".join(d["config_changes"]) + ")" if d["config_changes"]
            else "and so does the configuration")
    return f"the data of {d['b']} equals {d['a']}'s: no sample added, removed or changed; {what}"


__all__ = ["DiffError", "config_changes", "diff_manifests", "diff_releases", "identical_note", "sample_changes",
           "sample_records", "summary_line"]
