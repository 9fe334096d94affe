"""Release manifests, changelog, verification and diffs.

``manifest.json`` names the version, when it was built, what it was built from (the work
directory's manifest hash and build configuration), the release options and code version, counts per
variant and split, and ``files``: every other shipped file's sha256 and size. ``dist/`` (which packs
the manifest itself) and the build state are outside ``files``. The ``created`` timestamp is the
only field that changes when the same work directory is released again with the same options.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from comcoco.errors import ComcocoError
from comcoco.io import sha256_file, write_text_atomic
from comcoco.release.download import verify_files
from comcoco.release.options import version_key

MANIFEST_NAME = "manifest.json"
EXCLUDED_TOP = ("dist", "_build")
CHANGELOG_TITLE = "# Changelog\n\nNewest release first. Each entry compares with the previous release.\n"


class ManifestError(ComcocoError):
    """A release folder has no readable manifest."""


def release_files(root: str | os.PathLike[str]) -> list[str]:
    """Every shipped file below ``root`` except the manifest, ``dist/`` and build state, sorted."""
    root = Path(root)
    out = []
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if rel == MANIFEST_NAME or rel.split("/", 1)[0] in EXCLUDED_TOP or p.name.startswith("."):
            continue
        out.append(rel)
    return sorted(out)


def hash_files(root: str | os.PathLike[str], files: list[str], progress: bool = False) -> dict[str, dict[str, Any]]:
    root = Path(root)
    return {rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size}
            for rel in tqdm(files, desc="hashing", unit="file", disable=not progress, leave=False)}


def build_manifest(workdir: Path, release: Path, version: str, options: dict[str, Any],
                   counts: dict[str, dict[str, dict[str, int]]], selection: dict[str, Any],
                   export_stats: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    """Hash the staged release and write ``manifest.json``; returns it."""
    from comcoco.build import code_version
    from comcoco.workdir import MANIFEST_FILE

    plan = json.loads((workdir / "plan.json").read_text())
    wd_manifest = workdir / MANIFEST_FILE
    totals: dict[str, dict[str, int]] = {}
    for variant, per_split in counts.items():
        t = totals.setdefault(variant, {"samples": 0, "expressions": 0, "images": 0})
        for c in per_split.values():
            for k in t:
                t[k] += c[k]
    manifest = {
        "name": "comcoco",
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": {
            "workdir_manifest_sha256": sha256_file(wd_manifest) if wd_manifest.is_file() else None,
            "source": plan["source"],
        },
        "build_config": plan["config"],
        "release_config": options,
        "code_version": code_version(),
        "counts": {"per_split": counts, "total": totals},
        "selection": selection,
        "profile": plan["config"].get("compose", {}).get("profile", "paper"),
        "audit": _audit_summary(release),
        "export": export_stats,
        "files": hash_files(release, release_files(release), progress),
    }
    write_text_atomic(release / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _audit_summary(release: Path) -> dict[str, Any] | None:
    """The headline of the release's artifact audit (``audit.json``), or None when none was run."""
    path = release / "audit.json"
    if not path.is_file():
        return None
    a = json.loads(path.read_text())
    return {k: a.get(k) for k in ("auc", "ci", "n_pasted", "n_native", "cues", "verdict")}


def read_manifest(release: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(release) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
        manifest["files"], manifest["version"]
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found; {release} is not a comcoco release") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: not a comcoco release manifest ({exc})") from None
    return manifest


def verify_release(release: str | os.PathLike[str], progress: bool = False) -> list[str]:
    """Re-hash every file listed in the manifest; returns the problems (empty when all match).

    Files present in the release but not in the manifest are reported too.
    """
    release = Path(release)
    manifest = read_manifest(release)
    problems = verify_files(release, manifest["files"], progress=progress)
    problems += [f"{rel}: not listed in the manifest" for rel in release_files(release)
                 if rel not in manifest["files"]]
    return problems


def split_ordered(per_split: dict[str, Any]) -> list[tuple[str, Any]]:
    """Items of a per-split mapping in train, val, test order (JSON round trips sort them by name)."""
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(per_split.items(), key=lambda kv: (order.get(kv[0], 3), kv[0]))


# --- changelog ---------------------------------------------------------------------------------------


def previous_release(releases: Path, version: str) -> Path | None:
    """The newest published release below ``version`` in ``releases``, if any."""
    best: tuple[tuple[int, ...], Path] | None = None
    for d in releases.glob("comcoco-*"):
        v = d.name.removeprefix("comcoco-")
        if d.suffix == ".incomplete" or not (d / MANIFEST_NAME).is_file():
            continue
        try:
            key = version_key(v)
        except ValueError:
            continue
        if key < version_key(version) and (best is None or key > best[0]):
            best = (key, d)
    return best[1] if best else None


def changelog_entry(version: str, counts: dict[str, Any], selection: dict[str, Any], staging: Path,
                    previous: Path | None) -> str:
    lines = [f"## {version}", ""]
    for variant, per_split in counts.items():
        parts = ", ".join(f"{s} {c['samples']} samples / {c['expressions']} expressions"
                          for s, c in split_ordered(per_split))
        lines.append(f"- {variant}: {parts}")
    if selection.get("excluded"):
        lines.append("- left out: " + ", ".join(f"{k} {v}" for k, v in selection["excluded"].items()))
    if previous is not None:
        d = diff_releases(previous, staging, new_counts=counts)
        lines.append(f"- compared with {d['a']}: {len(d['added'])} added, {len(d['removed'])} removed, "
                     f"{len(d['changed'])} changed samples")
    else:
        lines.append("- first release in this folder")
    return "\n".join(lines) + "\n"


def write_changelog(path: Path, shared: Path, entry: str) -> None:
    """The release's ``CHANGELOG.md``: this entry above those of the folder's changelog."""
    earlier = ""
    if shared.is_file():
        earlier = shared.read_text().removeprefix(CHANGELOG_TITLE).lstrip("\n")
    write_text_atomic(path, CHANGELOG_TITLE + "\n" + entry + ("\n" + earlier if earlier else ""))


# --- diff --------------------------------------------------------------------------------------------


def _load_refs(release: Path, variant: str) -> list[dict[str, Any]]:
    from comcoco.sources.refer import load_plain_pickle

    path = release / variant / "refs(unc).p"
    if not path.is_file():
        raise ManifestError(f"{path}: not found")
    return load_plain_pickle(path)


def _sample_signatures(release: Path, files: dict[str, dict[str, Any]]) -> dict[tuple[int, int, int], str]:
    """Provenance key (fg_ref_id, fg_ann_id, bg_image_id) → hash of what users get for that sample."""
    out = {}
    for ref in _load_refs(release, "ComCOCO"):
        meta = ref.get("comcoco") or {}
        key = (int(meta["fg_ref_id"]), int(meta["fg_ann_id"]), int(meta["bg_image_id"]))
        image = f"comcoco_{ref['image_id']:012d}"
        parts = [ref["split"], ref["category_id"], [s["raw"] for s in ref["sentences"]],
                 files.get(f"gt/{meta['gt_file_name']}", {}).get("sha256"),
                 files.get(f"masks/{meta['mask_file_name']}", {}).get("sha256"),
                 sorted(v["sha256"] for k, v in files.items() if k.startswith(f"images/{image}."))]
        out[key] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return out


def diff_releases(a: str | os.PathLike[str], b: str | os.PathLike[str],
                  new_counts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Samples added, removed and changed from release ``a`` to ``b``, and count deltas.

    Samples are matched by provenance (source ref, source annotation, background image); a sample
    is changed when its split, category, expressions or any of its files differ.
    """
    a, b = Path(a), Path(b)
    ma = read_manifest(a)
    if new_counts is None:
        mb = read_manifest(b)
        files_b, counts_b, version_b = mb["files"], mb["counts"]["per_split"], mb["version"]
    else:  # b is being built: hash its files now
        files_b = hash_files(b, release_files(b))
        counts_b, version_b = new_counts, b.name.removeprefix("comcoco-").removesuffix(".incomplete")
    sa, sb = _sample_signatures(a, ma["files"]), _sample_signatures(b, files_b)
    counts_a = ma["counts"]["per_split"]
    deltas: dict[str, dict[str, dict[str, int]]] = {}
    for variant in sorted(set(counts_a) | set(counts_b)):
        ca, cb = counts_a.get(variant, {}), counts_b.get(variant, {})
        for split in sorted(set(ca) | set(cb)):
            x, y = ca.get(split, {}), cb.get(split, {})
            deltas.setdefault(variant, {})[split] = {k: y.get(k, 0) - x.get(k, 0)
                                                     for k in ("samples", "expressions", "images")}

    def fmt(keys: Any) -> list[dict[str, int]]:
        return [{"fg_ref_id": k[0], "fg_ann_id": k[1], "bg_image_id": k[2]} for k in sorted(keys)]

    return {
        "a": ma["version"], "b": version_b,
        "added": fmt(sb.keys() - sa.keys()),
        "removed": fmt(sa.keys() - sb.keys()),
        "changed": fmt(k for k in sa.keys() & sb.keys() if sa[k] != sb[k]),
        "unchanged": len([k for k in sa.keys() & sb.keys() if sa[k] == sb[k]]),
        "count_deltas": deltas,
    }


__all__ = ["MANIFEST_NAME", "ManifestError", "build_manifest", "diff_releases", "read_manifest",
           "release_files", "verify_release"]
