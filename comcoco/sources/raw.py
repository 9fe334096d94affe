"""The two files of a REFER source read into raw data: the refs list and ``instances.json``.

A refs pickle is unpickled by the restricted unpickler and refused unless it holds plain builtins
only; the refs' typed records are prepared on the way, since they prove most of the tree plain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comcoco.records import Ref
from comcoco.sources.format import SourceError
from comcoco.sources.parse import load_json, prepare_ref_records
from comcoco.sources.safe_pickle import all_plain, check_plain, unpickle_restricted


def read_instances(instances_file: Path, data: bytes | None = None) -> dict[str, Any]:
    """``instances.json`` as a dict with list-valued images, annotations and categories."""
    instances = load_json(instances_file, data)
    if not isinstance(instances, dict):
        raise SourceError(f"{instances_file}: expected a JSON object, got {type(instances).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(instances.get(key), list):
            raise SourceError(f"{instances_file}: missing or non-list {key!r}")
    return instances


def read_refs(refs_file: Path, data: bytes | None = None) -> tuple[list[Any], list[Ref | None] | None]:
    """The refs list and its prepared records; a pickle is refused unless it is plain builtins only.

    The prepared records already prove most of a REFER pickle plain (exact ints, strings and lists
    of strings), so only what they left out is checked, or the whole tree when some ref took the
    per-record path: the same refusals as :func:`load_plain_pickle`, at a fraction of the cost.
    """
    if refs_file.suffix != ".p":
        refs = load_json(refs_file, data)
        if not isinstance(refs, list):
            raise SourceError(f"{refs_file}: expected a list of refs, got {type(refs).__name__}")
        return refs, prepare_ref_records(refs)[0]
    refs = unpickle_restricted(refs_file, data)
    if type(refs) is not list:
        check_plain(refs, refs_file)
        raise SourceError(f"{refs_file}: expected a list of refs, got {type(refs).__name__}")
    prepared, loose = prepare_ref_records(refs)
    if None in prepared or not all_plain(loose):
        check_plain(refs, refs_file)  # refuses, naming the first offending type of the whole tree
    return refs, prepared

