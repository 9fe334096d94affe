"""The REFER writer's ``ref_extras``: extra keys after REFER's 8, plain types, readers ignore them."""

from __future__ import annotations

import numpy as np
import pytest

from comcoco.records import Annotation, Category, ImageInfo, Ref, Sentence
from comcoco.sources.refer import load_plain_pickle, load_source, write_source

REFER_KEYS = ["sent_ids", "file_name", "ann_id", "ref_id", "image_id", "split", "sentences", "category_id"]


def _minimal():
    image = ImageInfo(image_id=7, file_name="a.jpg", width=20, height=10)
    ann = Annotation(ann_id=3, image_id=7, category_id=1, bbox=(1.0, 1.0, 5.0, 5.0), area=25.0, iscrowd=0,
                     segmentation=[[1.0, 1.0, 6.0, 1.0, 6.0, 6.0, 1.0, 6.0]])
    ref = Ref(ref_id=0, ann_id=3, image_id=7, category_id=1, split="train",
              sentences=(Sentence(sent_id=0, raw="A man", sent="a man", tokens=("a", "man")),))
    return [ref], [image], [ann], [Category(1, "person", "person")]


def test_extra_keys_follow_refer_keys_and_load(tmp_path):
    refs, images, anns, cats = _minimal()
    write_source(tmp_path, refs, images, anns, cats, dataset="ds",
                 ref_extras={0: {"comcoco": {"fg_ref_id": np.int64(5), "box": (1, 2, 3, 4), "score": 0.5}}})
    raw = load_plain_pickle(tmp_path / "ds" / "refs(unc).p")[0]
    assert list(raw) == REFER_KEYS + ["comcoco"]
    assert raw["comcoco"] == {"fg_ref_id": 5, "box": [1, 2, 3, 4], "score": 0.5}
    assert type(raw["comcoco"]["fg_ref_id"]) is int
    src = load_source(tmp_path, dataset="ds")
    assert src.ref(0).sentences[0].raw == "A man" and src.Refs[0]["comcoco"]["fg_ref_id"] == 5


def test_extra_keys_refused_when_clashing_or_unknown(tmp_path):
    refs, images, anns, cats = _minimal()
    with pytest.raises(ValueError, match="replace REFER keys"):
        write_source(tmp_path, refs, images, anns, cats, ref_extras={0: {"split": "val"}})
    with pytest.raises(ValueError, match="ref 9"):
        write_source(tmp_path, refs, images, anns, cats, ref_extras={9: {"x": 1}})
    with pytest.raises(ValueError, match="cannot write"):
        write_source(tmp_path, refs, images, anns, cats, ref_extras={0: {"x": object()}})
