"""Building a release: the stage list both the plain loop and the Prefect flow walk.

``RELEASE_STAGES``: select → export → validate (optional) → card → manifest → dist, all inside
``RELEASES/comcoco-X.Y.Z.incomplete/``; ``run_release_stages`` creates that staging folder first and
renames it to ``comcoco-X.Y.Z`` last (or removes it on any failure), so nothing half-built or
unvalidated is ever published and an existing version is never overwritten. Intermediate state lives
in ``<staging>/_build/`` (never hashed, never shipped, removed on success). Every stage step is a
function of paths and small dicts, so the flow in ``pipelines/release.py`` runs each as a task.

A published release never changes: validating an existing one writes its report beside it
(``comcoco.sahm.validate.write_validation``), never into it, and so does packing one published
without ``dist/`` (``pack=False``, ``comcoco release --no-dist``): ``pack_published`` writes the shards
to ``comcoco-X.Y.Z.dist/`` beside it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comcoco.io import flush_filesystem, write_bytes_atomic, write_text_atomic
from comcoco.locks import exclusive
from comcoco.pool import available_cores, in_child, worker_pool
from comcoco.release.export import (
    VARIANTS,
    read_entries,
    variant_counts,
    write_entries,
    write_instruct,
    write_refer,
)
from comcoco.release.files import export_files
from comcoco.release.options import (  # noqa: F401 (re-exported: these lived here before)
    UNREVIEWED_CHOICES,
    ReleaseError,
    ReleaseOptions,
    check_version,
    release_name,
    version_key,
)
from comcoco.release.pack import DEFAULT_SHARD_BYTES, pack_release
from comcoco.release.select import polygons_of, select_entries  # noqa: F401 (re-exported)
from comcoco.stages import Executor, Inline, Stage, walk
from comcoco.workdir import Workdir, WorkdirError

BUILD_DIR = "_build"
ENTRIES_FILE = f"{BUILD_DIR}/entries.json"
SELECTION_FILE = f"{BUILD_DIR}/selection.json"
EXPORT_FILE = f"{BUILD_DIR}/export.json"
VALIDATION_FILE = "validation/validation.json"
POOL_SAMPLES = 64  # samples per default export worker: a smaller release is exported in this process
# Work directories (and releases) this large are selected from, exported and audited in a process of
# their own: each of those stages needs most of a GiB once at the paper's size, which this process
# would otherwise keep (Python's allocator gives little back) through every later stage.
CHILD_SELECT_SAMPLES = 2000

ValidationHook = Callable[[str], dict[str, Any]]
log = logging.getLogger(__name__)


# --- the staging directory ----------------------------------------------------------------------------


def start_release(releases: str | os.PathLike[str], version: str) -> Path:
    """Create a fresh ``comcoco-X.Y.Z.incomplete``; refuse when that version already exists."""
    check_version(version)
    releases = Path(releases)
    final = releases / release_name(version)
    if final.exists():
        raise ReleaseError(f"{final}: release {version} already exists; releases are never overwritten")
    staging = releases / f"{release_name(version)}.incomplete"
    if staging.exists():  # left by an interrupted build: nothing in it was published
        shutil.rmtree(staging)
    (staging / BUILD_DIR).mkdir(parents=True)
    return staging


def finish_release(staging: str | os.PathLike[str]) -> Path:
    """Drop the build state and rename ``.incomplete`` into place (refusing to overwrite)."""
    staging = Path(staging)
    final = staging.with_name(staging.name.removesuffix(".incomplete"))
    if final.exists():
        raise ReleaseError(f"{final}: appeared during the build; not overwritten")
    shutil.rmtree(staging / BUILD_DIR, ignore_errors=True)
    flush_filesystem(staging)  # every file on disk (written without an fsync each) before it is published
    os.rename(staging, final)
    # The releases folder's own changelog is the newest release's (which holds every earlier entry).
    write_bytes_atomic(final.parent / "CHANGELOG.md", (final / "CHANGELOG.md").read_bytes())
    return final


# --- the stages' steps (paths and small dicts in and out) ------------------------------------------------


def select_stage(workdir: str | os.PathLike[str], staging: str | os.PathLike[str], options: ReleaseOptions,
                 child: bool | None = None) -> dict[str, Any]:
    """Choose the release's samples and write ``_build/entries.json``; returns the selection report.

    ``child`` (None: when the work directory lists ``CHILD_SELECT_SAMPLES`` samples or more) runs it in
    a process of its own: selecting loads the source, its index and every status row, about 1 GB at
    the paper's size, which this process would otherwise keep through every later stage."""
    if child is None:
        child = Workdir(workdir).status_rows() >= CHILD_SELECT_SAMPLES
    if child:
        return in_child(_select, str(workdir), str(staging), options,
                        lost=lambda: ReleaseError(f"{workdir}: the selection's process died (out of memory?)"))
    return _select(workdir, staging, options)


def _select(workdir: str | os.PathLike[str], staging: str | os.PathLike[str], options: ReleaseOptions) -> dict[str, Any]:
    staging = Path(staging)
    entries, report = select_entries(workdir, options)
    if not entries:
        raise ReleaseError(f"{workdir}: no sample qualifies for a release ({report['excluded']})")
    check_workdir_files(workdir, entries)
    write_entries(staging / ENTRIES_FILE, entries)
    write_text_atomic(staging / SELECTION_FILE, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def check_workdir_files(workdir: str | os.PathLike[str], entries: list[Any], shown: int = 5) -> None:
    """Refuse to release from a work directory whose files differ from its ``manifest.json``: every file
    the release reads (the tables, and each entry's composite, ground truth and masks) is hashed and
    compared, so a file damaged or edited after the build is never published."""
    from comcoco.workdir import PLAN_FILE, PLAN_META, STATUS_FILE

    files = [STATUS_FILE, PLAN_FILE, PLAN_META]
    for e in entries:
        files += [f for f in (e.src_composite, e.src_ground_truth, e.src_effect_mask,
                              e.provenance.get("build_mask")) if f]
    problems = Workdir(workdir).check_against_manifest(files)
    if problems:
        more = f" and {len(problems) - shown} more" if len(problems) > shown else ""
        raise ReleaseError(f"{workdir}: the work directory does not match its manifest.json: "
                           + "; ".join(problems[:shown]) + more
                           + "; run `comcoco build` on it again (it makes damaged shards again), then release")


def _large(staging: str | os.PathLike[str]) -> bool:
    """Whether the release being built holds ``CHILD_SELECT_SAMPLES`` samples or more (its selection
    report says; a staging folder without one is small)."""
    try:
        return int(json.loads((Path(staging) / SELECTION_FILE).read_text())["selected"]) >= CHILD_SELECT_SAMPLES
    except (OSError, ValueError, KeyError, TypeError):
        return False


def export_stage(workdir: str | os.PathLike[str], staging: str | os.PathLike[str], options: ReleaseOptions,
                 progress: bool = False, workers: int | None = None, child: bool | None = None) -> dict[str, Any]:
    """Sample files in ``workers`` processes while this one writes the instruction pairs, then both
    variants' Parquet files in them, then REFER here once they have ended. The bytes written do not
    depend on ``workers``; by default every core this process may use, one per ``POOL_SAMPLES``
    samples (a pool's start costs about a second). ``child`` (None: for a large release, see ``_large``) runs it
    all in a process of its own, whose memory (every entry, the REFER files) goes when it ends."""
    if child is None:
        child = _large(staging)
    if child:
        return in_child(_export, str(workdir), str(staging), options, progress, workers,
                        lost=lambda: ReleaseError(f"{staging}: the export's process died (out of memory?)"))
    return _export(workdir, staging, options, progress, workers)


def _export(workdir: str | os.PathLike[str], staging: str | os.PathLike[str], options: ReleaseOptions,
            progress: bool = False, workers: int | None = None) -> dict[str, Any]:
    from comcoco.progress import Progress
    from comcoco.release.parquet import start_parquet

    staging = Path(staging)
    entries = read_entries(staging / ENTRIES_FILE)
    if workers is None:
        workers = max(1, min(available_cores(), len(entries) // POOL_SAMPLES))
    instruct: dict[str, list[str]] = {}

    def write_pairs() -> None:  # needs nothing the workers return
        for variant in VARIANTS:
            instruct[variant] = write_instruct(staging, entries, variant)

    with worker_pool(workers) as pool:
        files, exported = export_files(workdir, staging, entries, pool=pool, progress=progress, meanwhile=write_pairs)
        parquet = start_parquet(staging, entries, exported, options.rows_per_parquet, pool)
        with Progress("writing Parquet", sum(len(p.entries) for p in parquet.parts), unit="row",
                      enabled=progress) as bar:
            written = parquet.results(bar.advance)
    # REFER once the workers have ended: this process's largest allocation, not beside theirs
    out: dict[str, Any] = {"files": files, "variants": {}}
    for variant in VARIANTS:
        write_refer(staging, entries, variant, exported,
                    info={"description": f"{variant}: referring object removal pairs"})
        out["variants"][variant] = {"counts": variant_counts(entries, variant), "parquet": [],
                                    "instruct": instruct[variant]}
    for part, rel in zip(parquet.parts, written, strict=True):
        out["variants"][part.variant]["parquet"].append(rel)
    write_text_atomic(staging / EXPORT_FILE, json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


def validation_stage(staging: str | os.PathLike[str], validate: Any) -> dict[str, Any] | None:
    """Validate the staged release before it is published; the result is shipped and shown in the card.

    ``validate`` is a ``comcoco.sahm.validate.ValidationOptions`` (or its dict, from the flow), a
    callable, or ``"module:function"``; a callable gets the staging path and returns ``{"title",
    "metrics": {name: value}, "notes"}``.
    """
    if validate is None:
        return None
    if isinstance(validate, str):
        import importlib

        module, _, name = validate.partition(":")
        if not name:
            raise ReleaseError(f"validation hook {validate!r} must be of the form module:function")
        validate = getattr(importlib.import_module(module), name)
    if not callable(validate):
        from comcoco.sahm.validate import ValidationOptions, validate_release

        options = validate if isinstance(validate, ValidationOptions) else ValidationOptions.from_dict(validate)
        result = validate_release(staging, options=options, fresh=True)
    else:
        result = validate(str(staging))
    if not isinstance(result, dict):
        raise ReleaseError(f"validation returned {type(result).__name__}, expected a dict")
    write_text_atomic(Path(staging) / VALIDATION_FILE, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def card_stage(staging: str | os.PathLike[str], version: str, options: ReleaseOptions) -> list[str]:
    from comcoco.release.card import write_card

    staging = Path(staging)
    entries = read_entries(staging / ENTRIES_FILE)
    selection = json.loads((staging / SELECTION_FILE).read_text())
    export = json.loads((staging / EXPORT_FILE).read_text())
    validation_path = staging / VALIDATION_FILE
    validation = json.loads(validation_path.read_text()) if validation_path.is_file() else None
    audit_path = staging / "audit.json"
    audit = json.loads(audit_path.read_text()) if audit_path.is_file() else None
    return write_card(staging, version, entries, selection, export, validation, pairs=options.card_pairs,
                      audit=audit)


def manifest_stage(workdir: str | os.PathLike[str], staging: str | os.PathLike[str], version: str,
                   options: ReleaseOptions, progress: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Compare with the newest earlier release, write the changelog, hash everything into the manifest.

    Returns the manifest and the comparison (None for the first release in the folder).
    """
    from comcoco.release.diff import identical_note, summary_line
    from comcoco.release.manifest import (
        build_manifest,
        changelog_entry,
        compare_with_previous,
        write_changelog,
    )

    staging = Path(staging)
    releases = staging.parent
    selection = json.loads((staging / SELECTION_FILE).read_text())
    export = json.loads((staging / EXPORT_FILE).read_text())
    counts = {v: export["variants"][v]["counts"] for v in VARIANTS}
    comparison = compare_with_previous(Path(workdir), staging, version, options.to_dict(), counts)
    if comparison is not None:
        log.info("compared with %s: %s", comparison["a"], summary_line(comparison))
        for change in comparison["config_changes"]:
            log.info("configuration: %s", change)
        if comparison["identical_data"]:
            log.warning("%s", identical_note(comparison))
    write_changelog(staging / "CHANGELOG.md", releases / "CHANGELOG.md",
                    changelog_entry(version, counts, selection, comparison))
    manifest = build_manifest(Path(workdir), staging, version, options.to_dict(), counts, selection,
                              export["files"], progress=progress)
    return manifest, comparison


def dist_stage(staging: str | os.PathLike[str], version: str, options: ReleaseOptions, progress: bool = False) -> dict[str, Any]:
    return _pack(Path(staging), Path(staging) / "dist", version, options.shard_bytes, progress)


def _pack(release: Path, dist: Path, version: str, shard_bytes: int, progress: bool,
          problems: list[str] | None = None) -> dict[str, Any]:
    """The manifest's files and the manifest itself as tar shards in ``dist``; with ``problems``, each
    file is checked against the manifest in the same read and what differs is added there."""
    from comcoco.release.manifest import MANIFEST_NAME

    manifest = json.loads((release / MANIFEST_NAME).read_text())
    files = sorted(manifest["files"]) + [MANIFEST_NAME]
    shards = pack_release(release, files, dist, version, shard_bytes, progress=progress,
                          expected=None if problems is None else manifest["files"], problems=problems)
    return {"shards": len(shards), "bytes": sum(s.size for s in shards)}


def pack_published(release: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                   shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = False) -> tuple[Path, dict[str, Any]]:
    """Tar shards and ``index.json`` for a release published without ``dist/``: the shards its build
    would have packed, in ``out`` (default ``comcoco-X.Y.Z.dist`` beside it; the release is not touched).

    Every file is checked against ``manifest.json`` as it is packed, in the one read that packs it (a
    changed, missing or extra file is never published: the shards are then removed); they go to
    ``OUT.incomplete``, renamed ``OUT`` when whole and checked, under the version's lock. Returns
    ``out`` and the shard count and bytes.
    """
    from comcoco.release.manifest import read_manifest, release_files

    release = Path(release).resolve()
    manifest = read_manifest(release)
    version = manifest["version"]
    dist = Path(out).resolve() if out is not None else release.with_name(f"{release.name}.dist")
    tmp = dist.with_name(f"{dist.name}.incomplete")
    with exclusive(release.parent / f".{release_name(version)}.lock", f"pack {version}",
                   f"release {version} in {release.parent}"):
        if (release / "dist").exists():
            raise ReleaseError(f"{release / 'dist'}: this release was packed when it was built")
        if dist.exists():
            raise ReleaseError(f"{dist}: exists already (remove it to pack again)")
        problems = [f"{rel}: not listed in the manifest" for rel in release_files(release)
                    if rel not in manifest["files"]]
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted pack
        try:
            if not problems:  # an extra file refuses the pack before anything is read
                info = _pack(release, tmp, version, shard_bytes, progress, problems)
            if problems:
                shown = "; ".join(problems[:3]) + (f"; ... {len(problems) - 3} more" if len(problems) > 3 else "")
                raise ReleaseError(f"{release}: {len(problems)} file(s) do not match manifest.json, not packed: "
                                   f"{shown}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        flush_filesystem(tmp)
        os.rename(tmp, dist)
    return dist, info


# --- the stage list ------------------------------------------------------------------------------------


@dataclass
class ReleaseContext:
    """What a release is asked to do, and what its stages reported."""

    workdir: str
    staging: str
    version: str
    options: ReleaseOptions
    validate: Any = None  # ValidationOptions (or its dict), a callable, "module:function", or None
    progress: bool = False
    workers: int | None = None  # export processes (None: every core); never changes a byte of the release
    pack: bool = True  # write dist/ (tar shards for ``comcoco download``); never changes the release's files
    selection: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    dist: dict[str, Any] = field(default_factory=dict)


def _select_step(workdir: str, staging: str, options: dict) -> dict:
    report = select_stage(workdir, staging, ReleaseOptions(**options))
    log.info("select: %d of %d built samples; left out: %s; unreviewed %d (%sd)", report["selected"],
             report["workdir_status"].get("ok", 0),
             ", ".join(f"{k} {v}" for k, v in report["excluded"].items()) or "none",
             report["review"]["unreviewed"], report["unreviewed_policy"])
    return report


def _export_step(workdir: str, staging: str, options: dict, progress: bool, workers: int | None = None) -> dict:
    out = export_stage(workdir, staging, ReleaseOptions(**options), progress, workers)
    for variant, v in out["variants"].items():
        log.info("export: %s %s", variant, ", ".join(f"{s} {c['samples']} samples / {c['expressions']} expressions"
                                                      for s, c in sorted(v["counts"].items())))
    return out["files"]


def _card_step(staging: str, version: str, options: dict) -> list[str]:
    return card_stage(staging, version, ReleaseOptions(**options))


def _manifest_step(workdir: str, staging: str, version: str, options: dict, progress: bool) -> dict:
    from comcoco.release.diff import identical_note, summary_line

    m, d = manifest_stage(workdir, staging, version, ReleaseOptions(**options), progress)
    log.info("manifest: %d files", len(m["files"]))
    compared = None if d is None else {
        "previous": d["a"], "summary": summary_line(d), "config_changes": d["config_changes"],
        "identical_data": d["identical_data"], "note": identical_note(d) if d["identical_data"] else None}
    return {"files": len(m["files"]), "counts": m["counts"]["total"], "compared": compared}


def _dist_step(staging: str, version: str, options: dict, progress: bool) -> dict:
    out = dist_stage(staging, version, ReleaseOptions(**options), progress)
    log.info("dist: %d tar shard(s), %.1f MB", out["shards"], out["bytes"] / 1e6)
    return out


def _validate_arg(validate: Any) -> Any:
    """What a step can take: ValidationOptions travel as their dict (a flow's task arguments)."""
    to_dict = getattr(validate, "to_dict", None)
    return to_dict() if callable(to_dict) else validate


def _audit_step(staging: str, seed: int) -> dict:
    from comcoco.release.audit import write_audit

    if _large(staging):  # it parses the whole instances.json: about 0.4 GB at the paper's size
        return in_child(write_audit, staging, seed,
                        lost=lambda: ReleaseError(f"{staging}: the audit's process died (out of memory?)"))
    return write_audit(staging, seed=seed)


RELEASE_STAGES: tuple[Stage, ...] = (
    Stage("select", lambda c, ex: setattr(c, "selection", ex.call(
        "release-select", _select_step, c.workdir, c.staging, c.options.to_dict()))),
    Stage("export", lambda c, ex: ex.call(
        "release-export", _export_step, c.workdir, c.staging, c.options.to_dict(), c.progress, c.workers)),
    Stage("audit", lambda c, ex: c.options.audit and setattr(c, "audit", ex.call(
        "release-audit", _audit_step, c.staging, c.options.split_seed))),
    Stage("validate", lambda c, ex: c.validate is not None and ex.call(
        "release-validate", validation_stage, c.staging, _validate_arg(c.validate))),
    Stage("card", lambda c, ex: ex.call("release-card", _card_step, c.staging, c.version, c.options.to_dict())),
    Stage("manifest", lambda c, ex: setattr(c, "manifest", ex.call(
        "release-manifest", _manifest_step, c.workdir, c.staging, c.version, c.options.to_dict(), c.progress))),
    Stage("dist", lambda c, ex: c.pack and setattr(c, "dist", ex.call(
        "release-dist", _dist_step, c.staging, c.version, c.options.to_dict(), c.progress))),
)


def _start_step(releases: str, version: str) -> str:
    return str(start_release(releases, version))


def _publish_step(staging: str) -> str:
    path = str(finish_release(staging))
    log.info("published %s", path)
    return path


def run_release_stages(workdir: str | os.PathLike[str], releases: str | os.PathLike[str], version: str,
                       options: ReleaseOptions, executor: Executor, validate: Any = None,
                       progress: bool = False, workers: int | None = None, pack: bool = True) -> dict[str, Any]:
    """Stage, walk ``RELEASE_STAGES``, publish; returns the release's path, counts and timings.

    ``workers`` processes export the sample files and Parquet files (None: every core this process may
    use); the release's bytes are the same for any number. ``pack=False`` leaves out ``dist/`` (as many
    bytes again as the release: for a release published as a folder; ``pack_published`` packs it later).

    One builder per version: the version's lock (``RELEASES/.comcoco-X.Y.Z.lock``) is held throughout,
    and the work directory is read under its shared lock, so no build or review pull changes it meanwhile.
    """
    wd = Workdir(Path(workdir).resolve())
    try:
        wd.require_plan()  # fail before creating anything when the work directory is unusable
    except WorkdirError as exc:
        raise ReleaseError(str(exc)) from None
    releases = Path(releases).resolve()
    with release_locks(wd.root, releases, version):
        return _run_release_stages(wd, releases, version, options, executor, validate, progress, workers, pack)


@contextmanager
def release_locks(workdir: str | os.PathLike[str], releases: str | os.PathLike[str], version: str) -> Iterator[None]:
    """Hold version ``version`` in ``releases`` (one builder) and ``workdir`` shared (no writer meanwhile)."""
    check_version(version)
    releases = Path(releases).resolve()
    lock = releases / f".{release_name(version)}.lock"
    with exclusive(lock, f"release {version}", f"release {version} in {releases}"), \
            Workdir(Path(workdir).resolve()).lock(f"release {version}", shared=True):
        yield


def _run_release_stages(wd: Workdir, releases: Path, version: str, options: ReleaseOptions, executor: Executor,
                        validate: Any, progress: bool, workers: int | None, pack: bool) -> dict[str, Any]:
    staging = executor.call("release-start", _start_step, str(releases), version)
    ctx = ReleaseContext(str(wd.root), staging, version, options, validate, progress, workers, pack)
    try:
        seconds = walk(RELEASE_STAGES, ctx, executor)
        path = executor.call("release-publish", _publish_step, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if ctx.validate is None:
        seconds.pop("validate", None)
    if not options.audit:
        seconds.pop("audit", None)
    if not pack:
        seconds.pop("dist", None)
    return {"release": path, "selection": ctx.selection["splits"]["splits"], "manifest": ctx.manifest,
            "audit": ctx.audit, "dist": ctx.dist, "seconds": {k: round(v, 3) for k, v in seconds.items()}}


def build_release(workdir: str | os.PathLike[str], releases: str | os.PathLike[str], version: str,
                  options: ReleaseOptions | None = None, validate: Any = None,
                  progress: bool = False, workers: int | None = None, pack: bool = True) -> Path:
    """Every release stage in this process (the export's in ``workers`` processes); returns the published
    release directory."""
    result = run_release_stages(workdir, releases, version, options or ReleaseOptions(), Inline(), validate, progress,
                                workers, pack)
    return Path(result["release"])
