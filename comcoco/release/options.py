"""What decides a release besides its work directory: options, versions, and the release's own errors."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from comcoco.errors import ComcocoError
from comcoco.release.export import DEFAULT_ROWS_PER_PARQUET
from comcoco.release.pack import DEFAULT_SHARD_BYTES
from comcoco.sources.format import short

UNREVIEWED_CHOICES = ("include", "exclude")
_VERSION_RE = re.compile(r"[0-9]{1,9}\.[0-9]{1,9}\.[0-9]{1,9}")  # ASCII digits only (\d matches other scripts')


class ReleaseError(ComcocoError):
    """The release cannot be built as asked (bad version, existing release, unusable work directory)."""


@dataclass(frozen=True)
class ReleaseOptions:
    """Everything besides the work directory that decides a release's content."""

    proportions: dict[str, float] | None = None
    split_seed: int = 0
    unreviewed: str = "include"
    rows_per_parquet: int = DEFAULT_ROWS_PER_PARQUET
    shard_bytes: int = DEFAULT_SHARD_BYTES
    card_pairs: int = 8
    audit: bool = True  # run the artifact audit (comcoco.release.audit) and ship its result

    def __post_init__(self) -> None:
        if self.unreviewed not in UNREVIEWED_CHOICES:
            raise ReleaseError(f"--unreviewed must be one of {UNREVIEWED_CHOICES}, got {self.unreviewed!r}")
        if self.rows_per_parquet < 1 or self.shard_bytes < 1:
            raise ReleaseError("rows per Parquet file and shard bytes must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def release_name(version: str) -> str:
    return f"comcoco-{version}"


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):  # fullmatch: no trailing newline
        raise ReleaseError(f"version {short(version)} is not of the form X.Y.Z (ASCII digits)")
    return version


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))
