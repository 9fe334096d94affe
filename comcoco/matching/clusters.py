"""The 17 scene clusters of the paper's Table 10, keyed by COCO category id.

Scene matching only pairs a foreground object with backgrounds of the same cluster, so a
refrigerator never lands among elephants. Clusters are defined by COCO ids (the numbers RefCOCO+
and ``instances.json`` use); the names are kept beside them for reports and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from comcoco.errors import ComcocoError

# The 80 COCO categories, COCO 91-id numbering (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused).
COCO_CATEGORY_NAMES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}  # fmt: skip


@dataclass(frozen=True)
class Cluster:
    """One scene cluster: its Table 10 index and name, and the COCO category ids it holds."""

    index: int
    name: str
    category_ids: tuple[int, ...]

    @property
    def category_names(self) -> tuple[str, ...]:
        return tuple(COCO_CATEGORY_NAMES[c] for c in self.category_ids)


CLUSTERS: tuple[Cluster, ...] = (
    Cluster(0, "person", (1,)),
    Cluster(1, "traffic_p", (2, 3, 4, 6, 8)),
    Cluster(2, "airplane", (5,)),
    Cluster(3, "train", (7,)),
    Cluster(4, "boat", (9,)),
    Cluster(5, "municipal engineering", (10, 11, 13, 14, 15)),
    Cluster(6, "animal", (16, 17, 18, 19, 20, 21, 22, 23, 24, 25)),
    Cluster(7, "belongings", (27, 28, 31, 32, 33)),
    Cluster(8, "sport_p", (34, 37, 38, 39, 40, 41, 43)),
    Cluster(9, "snow sports", (35, 36)),
    Cluster(10, "surfboard", (42,)),
    Cluster(11, "tableware", (44, 46, 47, 48, 49, 50, 51)),
    Cluster(12, "natural foods", (52, 53, 54, 55, 56, 57)),
    Cluster(13, "processed foods", (58, 59, 60, 61)),
    Cluster(14, "large furniture", (62, 63, 65, 67, 70, 82)),
    Cluster(15, "middle furniture", (72, 78, 79, 80, 81)),
    Cluster(16, "miniature furniture", (64, 73, 74, 75, 76, 77, 84, 85, 86, 87, 88, 89, 90)),
)

_CLUSTER_OF: dict[int, int] = {cid: cl.index for cl in CLUSTERS for cid in cl.category_ids}


class UnknownCategoryError(ComcocoError, KeyError):
    """A category id that is not one of the 80 COCO categories, so it has no scene cluster."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else ""


def cluster_of(category_id: int) -> int:
    """The Table 10 cluster index of a COCO category id; raises ``UnknownCategoryError`` otherwise."""
    try:
        return _CLUSTER_OF[int(category_id)]
    except KeyError:
        raise UnknownCategoryError(
            f"category_id {category_id} is not a COCO category (no scene cluster in Table 10)"
        ) from None


def cluster_name(index: int) -> str:
    """The Table 10 name of cluster ``index``."""
    if not 0 <= int(index) < len(CLUSTERS):
        raise IndexError(f"cluster index {index} out of range 0..{len(CLUSTERS) - 1}")
    return CLUSTERS[int(index)].name
