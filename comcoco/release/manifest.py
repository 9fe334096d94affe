"""Release manifests, changelog, verification and diffs.

``manifest.json`` names the version, when it was built, what it was built from (the work
directory's manifest hash and build configuration), the release options and code version, counts per
variant and split, and ``files``: every other shipped file's sha256 and size. ``dist/`` (which packs
the manifest itself) and the build state are outside ``files``. The ``created`` timestamp is the
only field that changes when the same work directory is released again with the same options.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from comcoco.errors import ComcocoError
from comcoco.io import OncePerFile, sha256_file, write_text_atomic
from comcoco.progress import track
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
    """sha256 and size of each file; a file under two names (a shared Parquet file) is read once."""
    root = Path(root)
    hashes = OncePerFile()
    out: dict[str, dict[str, Any]] = {}
    for rel in track(files, "hashing", progress, unit="file"):
        st = (root / rel).stat()
        out[rel] = {"sha256": hashes.sha256(root / rel, st), "size": st.st_size}
    return out


def release_source(workdir: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """What a release was built from: the work directory's manifest hash and the source spec."""
    from comcoco.workdir import MANIFEST_FILE

    wd_manifest = workdir / MANIFEST_FILE
    return {"workdir_manifest_sha256": sha256_file(wd_manifest) if wd_manifest.is_file() else None,
            "source": plan["source"]}


def build_manifest(workdir: Path, release: Path, version: str, options: dict[str, Any],
                   counts: dict[str, dict[str, dict[str, int]]], selection: dict[str, Any],
                   export_stats: dict[str, Any], progress: bool = False) -> dict[str, Any]:
    """Hash the staged release and write ``manifest.json``; returns it."""
    from comcoco.build import code_version

    plan = json.loads((workdir / "plan.json").read_text())
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
        "source": release_source(workdir, plan),
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


def compare_with_previous(workdir: Path, staging: Path, version: str, options: dict[str, Any],
                          counts: dict[str, Any]) -> dict[str, Any] | None:
    """The diff from the newest earlier release in the same folder to the release being staged, if any."""
    from comcoco.build import code_version
    from comcoco.release.diff import diff_releases

    previous = previous_release(staging.parent, version)
    if previous is None:
        return None
    plan = json.loads((workdir / "plan.json").read_text())
    staged = {"version": version, "files": hash_files(staging, release_files(staging)),
              "counts": {"per_split": counts}, "release_config": options, "build_config": plan["config"],
              "source": release_source(workdir, plan), "code_version": code_version()}
    return diff_releases(previous, staging, staged=staged)


def changelog_entry(version: str, counts: dict[str, Any], selection: dict[str, Any],
                    comparison: dict[str, Any] | None) -> str:
    from comcoco.release.diff import identical_note

    lines = [f"## {version}", ""]
    for variant, per_split in counts.items():
        parts = ", ".join(f"{s} {c['samples']} samples / {c['expressions']} expressions"
                          for s, c in split_ordered(per_split))
        lines.append(f"- {variant}: {parts}")
    if selection.get("excluded"):
        lines.append("- left out: " + ", ".join(f"{k} {v}" for k, v in selection["excluded"].items()))
    if comparison is None:
        lines.append("- first release in this folder")
        return "\n".join(lines) + "\n"
    d = comparison
    lines.append(f"- compared with {d['a']}: {len(d['added'])} added, {len(d['removed'])} removed, "
                 f"{len(d['changed'])} changed samples ({d['unchanged']} unchanged)")
    lines += [f"- configuration: {c}" for c in d["config_changes"]] or ["- configuration: unchanged"]
    if d["identical_data"]:
        lines.append(f"- {identical_note(d)}")
    else:
        lines.append(f"- `comcoco release diff comcoco-{d['a']} comcoco-{d['b']}` says what changed in each sample")
    return "\n".join(lines) + "\n"


def write_changelog(path: Path, shared: Path, entry: str) -> None:
    """The release's ``CHANGELOG.md``: this entry above those of the folder's changelog."""
    earlier = ""
    if shared.is_file():
        earlier = shared.read_text().removeprefix(CHANGELOG_TITLE).lstrip("\n")
    write_text_atomic(path, CHANGELOG_TITLE + "\n" + entry + ("\n" + earlier if earlier else ""))


# --- diff (comcoco.release.diff; importable from here) ----------------------------------------------


def diff_releases(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> dict[str, Any]:
    """Configuration changes, and samples added, removed and changed with their reasons (``release.diff``)."""
    from comcoco.release.diff import diff_releases as diff

    return diff(a, b)


__all__ = ["MANIFEST_NAME", "ManifestError", "build_manifest", "changelog_entry", "compare_with_previous",
           "diff_releases", "read_manifest", "release_files", "release_source", "verify_release"]
