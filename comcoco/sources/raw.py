"""The two files of a REFER source read into raw data: the refs list and ``instances.json``.

A refs pickle is unpickled by the restricted unpickler and refused unless it holds plain builtins
only; the refs' typed records are prepared on the way, since they prove most of the tree plain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comcoco.records import Ref
from comcoco.sources.format import SourceError
from comcoco.sources.parse import SharedValues, load_json, prepare_ref_records
from comcoco.sources.safe_pickle import all_plain, check_plain, check_tree, unpickle_restricted

MAX_REF_VALUES = 50_000_000  # values a refs file may reach; RefCOCO+'s holds about 3 million


def read_instances(instances_file: Path, data: bytes | None = None) -> dict[str, Any]:
    """``instances.json`` as a dict with list-valued images, annotations and categories."""
    instances = load_json(instances_file, data)
    if not isinstance(instances, dict):
        raise SourceError(f"{instances_file}: expected a JSON object, got {type(instances).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(instances.get(key), list):
            raise SourceError(f"{instances_file}: missing or non-list {key!r}")
    return instances


def _prepared(refs: list[Any], refs_file: Path) -> tuple[list[Ref | None], list[Any]]:
    """The fast path's records; when a container is shared, first the whole tree is bounded."""
    try:
        return prepare_ref_records(refs)
    except SharedValues:
        check_tree(refs, refs_file, max_elements=MAX_REF_VALUES)
        return prepare_ref_records(refs, allow_shared=True)


def read_refs(refs_file: Path, data: bytes | None = None) -> tuple[list[Any], list[Ref | None] | None]:
    """The refs list and its prepared records; a pickle is refused unless it is plain builtins only.

    The prepared records already prove most of a REFER pickle plain (exact ints, strings and lists
    of strings), so only what they left out is checked, or the whole tree when some ref took the
    per-record path: the same refusals as :func:`load_plain_pickle`, at a fraction of the cost.
    Every part a later step walks is bounded in depth and in the values it reaches (``check_tree``),
    so a small hostile file cannot make loading take hours or memory without end.
    """
    if refs_file.suffix != ".p":
        refs = load_json(refs_file, data)
        if not isinstance(refs, list):
            raise SourceError(f"{refs_file}: expected a list of refs, got {type(refs).__name__}")
        prepared, loose = prepare_ref_records(refs)
        check_tree(refs if None in prepared else loose, refs_file, max_elements=MAX_REF_VALUES)
        return refs, prepared
    refs = unpickle_restricted(refs_file, data)
    if type(refs) is not list:
        check_plain(refs, refs_file)
        raise SourceError(f"{refs_file}: expected a list of refs, got {type(refs).__name__}")
    prepared, loose = _prepared(refs, refs_file)
    if None in prepared:
        check_tree(refs, refs_file, max_elements=MAX_REF_VALUES)
        check_plain(refs, refs_file)  # refuses, naming the first offending type of the whole tree
    else:
        check_tree(loose, refs_file, max_elements=MAX_REF_VALUES)
        if not all_plain(loose):
            check_plain(refs, refs_file)
    return refs, prepared
