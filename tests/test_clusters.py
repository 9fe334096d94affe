"""The 17 scene clusters of Table 10: exact names, members, and one cluster per COCO category."""

from __future__ import annotations

import pytest

from comcoco.matching.clusters import (
    CLUSTERS,
    COCO_CATEGORY_NAMES,
    UnknownCategoryError,
    cluster_name,
    cluster_of,
)
from comcoco.sources.refer import COCO_CATEGORIES

# Table 10 of the paper, transcribed by category name.
TABLE_10 = [
    ("person", ["person"]),
    ("traffic_p", ["bicycle", "car", "motorcycle", "bus", "truck"]),
    ("airplane", ["airplane"]),
    ("train", ["train"]),
    ("boat", ["boat"]),
    ("municipal engineering", ["traffic light", "fire hydrant", "stop sign", "parking meter", "bench"]),
    ("animal", ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"]),
    ("belongings", ["backpack", "umbrella", "handbag", "tie", "suitcase"]),
    ("sport_p", ["frisbee", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "tennis racket"]),
    ("snow sports", ["skis", "snowboard"]),
    ("surfboard", ["surfboard"]),
    ("tableware", ["bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl"]),
    ("natural foods", ["banana", "apple", "sandwich", "orange", "broccoli", "carrot"]),
    ("processed foods", ["hot dog", "pizza", "donut", "cake"]),
    ("large furniture", ["chair", "couch", "bed", "dining table", "toilet", "refrigerator"]),
    ("middle furniture", ["tv", "microwave", "oven", "toaster", "sink"]),
    (
        "miniature furniture",
        ["potted plant", "laptop", "mouse", "remote", "keyboard", "cell phone", "book", "clock", "vase",
         "scissors", "teddy bear", "hair drier", "toothbrush"],
    ),
]  # fmt: skip


def test_table_10_names_and_members():
    assert len(CLUSTERS) == 17
    assert [c.index for c in CLUSTERS] == list(range(17))
    for cluster, (name, members) in zip(CLUSTERS, TABLE_10, strict=True):
        assert cluster.name == name
        assert sorted(cluster.category_names) == sorted(members)
    assert [len(c.category_ids) for c in CLUSTERS] == [1, 5, 1, 1, 1, 5, 10, 5, 7, 2, 1, 7, 6, 4, 6, 5, 13]


def test_every_coco_category_in_exactly_one_cluster():
    assert len(COCO_CATEGORIES) == 80
    assert {c.id: c.name for c in COCO_CATEGORIES} == COCO_CATEGORY_NAMES
    for cat in COCO_CATEGORIES:
        holders = [cl.index for cl in CLUSTERS if cat.id in cl.category_ids]
        assert holders == [cluster_of(cat.id)], cat
    all_ids = [cid for cl in CLUSTERS for cid in cl.category_ids]
    assert sorted(all_ids) == sorted(c.id for c in COCO_CATEGORIES)


def test_known_lookups_and_unknown_ids():
    assert cluster_of(1) == 0
    assert cluster_of(17) == 6  # cat → animal
    assert cluster_of(82) == 14  # refrigerator → large furniture, never with elephants
    assert cluster_name(cluster_of(75)) == "miniature furniture"  # remote
    for bad in (0, 12, 91, -1):
        with pytest.raises(UnknownCategoryError, match=f"category_id {bad} is not a COCO category"):
            cluster_of(bad)
    with pytest.raises(IndexError):
        cluster_name(17)
