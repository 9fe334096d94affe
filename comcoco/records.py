"""The shared record vocabulary every comcoco stage speaks.

Stages are functions from these records to these records; files are read and written at the edges.
This module imports nothing else from comcoco, so any stage can depend on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# --- source (REFER format) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sentence:
    """One referring expression as REFER stores it."""

    sent_id: int
    raw: str
    sent: str
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class Ref:
    """A referred object: one COCO annotation with its expressions and split."""

    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    split: str
    sentences: tuple[Sentence, ...]
    file_name: str = ""

    @property
    def sent_ids(self) -> tuple[int, ...]:
        return tuple(s.sent_id for s in self.sentences)


@dataclass(frozen=True)
class Annotation:
    """A COCO instance annotation (polygons or RLE in ``segmentation``)."""

    ann_id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    area: float
    iscrowd: int
    segmentation: Any


@dataclass(frozen=True)
class ImageInfo:
    """A COCO image entry; ``extra`` keeps every other key of the JSON entry."""

    image_id: int
    file_name: str
    width: int
    height: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    supercategory: str = ""


@dataclass(frozen=True)
class Problem:
    """A defect found in an input: listed, never fatal by itself."""

    kind: str
    file: str
    id: int | str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- splits ------------------------------------------------------------------------------------

# A release's splits. RefCOCO+ has train, val, testA and testB; both test splits map to ``test``.
SPLITS: tuple[str, ...] = ("train", "val", "test")


def release_split_or_none(source_split: object) -> str | None:
    """The release split a RefCOCO+ split maps to (train, val; testA, testB and test → test), or None."""
    if not isinstance(source_split, str):
        return None
    s = source_split.strip()
    if s.startswith("test"):
        return "test"
    return s if s in ("train", "val") else None


def release_split_of(source_split: str) -> str:
    """As ``release_split_or_none``, for splits already known to map (an index holds only those)."""
    split = release_split_or_none(source_split)
    if split is None:
        import reprlib

        raise ValueError(f"unknown source split {reprlib.repr(source_split)}")
    return split


# --- matching ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A background image chosen for a referred object (rank 1 = least similar expressions)."""

    ref_id: int
    ann_id: int
    fg_image_id: int
    category_id: int
    cluster: int
    rank: int
    bg_image_id: int
    similarity: float


# --- composing ---------------------------------------------------------------------------------

FILTER_NAMES: tuple[str, ...] = ("temperature", "brightness", "contrast", "saturation", "highlight", "shadow")


@dataclass(frozen=True)
class FilterArgs:
    """The six Harmonizer filter arguments, in the order the filters are applied."""

    temperature: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    highlight: float = 0.0
    shadow: float = 0.0

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(float(getattr(self, n)) for n in FILTER_NAMES)

    @classmethod
    def from_sequence(cls, values: Any) -> FilterArgs:
        vals = [float(v) for v in values]
        if len(vals) != len(FILTER_NAMES):
            raise ValueError(f"expected {len(FILTER_NAMES)} filter arguments, got {len(vals)}")
        return cls(*vals)


@dataclass(frozen=True)
class Placement:
    """Where an object goes: GracoNet's (s, rx, ry) and the resulting box in the background."""

    s: float
    rx: float
    ry: float
    box: tuple[int, int, int, int]  # x, y, w, h in background pixels
    score: float = 0.0
    components: dict[str, float] = field(default_factory=dict, compare=False, hash=False)


# Sample status values; anything but "ok" is a failure kind with a reason.
STATUS_OK = "ok"
STATUS_BAD_SOURCE = "bad_source"
STATUS_BAD_BACKGROUND = "bad_background"
STATUS_PLACEMENT_FAILED = "placement_failed"
STATUS_HARMONIZE_FAILED = "harmonize_failed"
STATUS_REJECTED_BY_REVIEW = "rejected_by_review"
STATUSES: tuple[str, ...] = (
    STATUS_OK,
    STATUS_BAD_SOURCE,
    STATUS_BAD_BACKGROUND,
    STATUS_PLACEMENT_FAILED,
    STATUS_HARMONIZE_FAILED,
    STATUS_REJECTED_BY_REVIEW,
)
# Only in a work directory's status table: a planned sample whose shard did not complete.
STATUS_NOT_BUILT = "not_built"


# --- review ------------------------------------------------------------------------------------

REVIEW_STAGES: tuple[str, ...] = ("placement", "expressions")
PLACEMENT_DECISIONS: tuple[str, ...] = ("accept", "reject", "adjust")


@dataclass(frozen=True)
class ReviewDecision:
    """One reviewer's verdict on one sample at one stage, as stored durably in the work directory.

    Stage ``placement``: ``decision`` is accept, reject or adjust (``box`` then holds the corrected
    x, y, w, h in composite pixels). Stage ``expressions``: ``decision`` is ``done``; ``kept_sent_ids``
    and ``dropped_sent_ids`` name the source expressions, ``spatial_phrases`` the added ones.
    """

    sample_id: str
    stage: str
    decision: str
    reviewer: str
    reviewed_at: str  # ISO 8601, UTC
    reason: str = ""
    box: tuple[int, int, int, int] | None = None
    kept_sent_ids: tuple[int, ...] = ()
    dropped_sent_ids: tuple[int, ...] = ()
    spatial_phrases: tuple[str, ...] = ()
    task_id: int | None = None
    annotation_id: int | None = None
