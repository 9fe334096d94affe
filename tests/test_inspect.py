"""``inspect_source`` and ``comcoco inspect``: counts per split, every problem kind, exit codes."""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from comcoco.commands import inspect as inspect_cmd
from comcoco.records import Annotation, ImageInfo, Ref, Sentence
from comcoco.sources.refer import COCO_CATEGORIES, DEFAULT_IMAGE_SUBDIR, load_source, write_source
from comcoco.sources.validate import PROBLEM_KINDS, inspect_source

REPO = Path(__file__).resolve().parents[1]
SQUARE = [[4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]]


def _jpeg(path: Path, w: int, h: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    path.write_bytes(buf.getvalue())


def _sent(sid: int, text: str) -> Sentence:
    return Sentence(sid, text, text, tuple(text.split()))


def _build(root: Path, refs: list[Ref] | None = None, anns: list[Annotation] | None = None, strict: bool = True) -> Path:
    """A small valid source: 3 generated 64x48 JPEGs, one square annotation each, 4 refs."""
    images = [ImageInfo(i, f"COCO_train2014_{i:012d}.jpg", 64, 48) for i in (1, 2, 3)]
    base_anns = [Annotation(10 + i, i, 1, (4.0, 4.0, 16.0, 16.0), 256.0, 0, SQUARE) for i in (1, 2, 3)]
    base_anns.append(Annotation(14, 1, 18, (30.0, 10.0, 16.0, 16.0), 256.0, 0, [[30.0, 10.0, 46.0, 10.0, 46.0, 26.0]]))
    base_refs = [
        Ref(0, 11, 1, 1, "train", (_sent(0, "man in red"), _sent(1, "red shirt"))),
        Ref(1, 14, 1, 18, "train", (_sent(2, "brown dog"),)),
        Ref(2, 12, 2, 1, "val", (_sent(3, "woman"), _sent(4, "lady"), _sent(5, "person"))),
        Ref(3, 13, 3, 1, "testA", (_sent(6, "kid"),)),
    ]
    write_source(root, base_refs + (refs or []), images, base_anns + (anns or []), list(COCO_CATEGORIES), strict=strict)
    image_dir = root / DEFAULT_IMAGE_SUBDIR
    image_dir.mkdir(parents=True, exist_ok=True)
    for image in images:
        _jpeg(image_dir / image.file_name, 64, 48, image.image_id)
    return root


def _kinds(problems: Any) -> set[tuple[str, Any]]:
    return {(p.kind, p.id) for p in problems}


def test_clean_source_counts_per_split(tmp_path: Path) -> None:
    src = load_source(_build(tmp_path))
    for deep in (False, True):
        report = inspect_source(src, deep=deep, workers=2)
        assert report.problems == []
        d = report.to_dict()
        assert (d["refs"], d["expressions"], d["images"], d["annotations"]) == (4, 7, 3, 4)
        assert d["referred_images"] == 3
        assert d["splits"] == {
            "train": {"refs": 2, "expressions": 3, "images": 1},
            "val": {"refs": 1, "expressions": 3, "images": 1},
            "testA": {"refs": 1, "expressions": 1, "images": 1},
        }
        assert list(d["splits"]) == ["train", "val", "testA"]
        assert d["deep"] is deep and d["problems"] == []


def test_every_problem_kind_is_listed(tmp_path: Path) -> None:
    bad_anns = [
        Annotation(20, 2, 1, (1.0, 1.0, 5.0, 5.0), 0.0, 0, []),  # no polygons
        Annotation(21, 2, 1, (1.0, 1.0, 5.0, 5.0), 1.0, 0, [SQUARE[0], []]),  # one empty part
        Annotation(22, 2, 1, (1.0, 1.0, 5.0, 5.0), 0.0, 0, [[1.0, 1.0, 5.0, 5.0]]),  # two points
        Annotation(23, 2, 1, (1.0, 1.0, 9.0, 9.0), 0.0, 0, [[1.0, 1.0, 5.0, 5.0, 10.0, 10.0]]),  # collinear
        Annotation(24, 2, 1, (50.0, 30.0, 40.0, 40.0), 9.0, 0, [[50.0, 30.0, 63.0, 30.0, 63.0, 47.0]]),  # bbox past 64x48
        Annotation(25, 2, 1, (1.0, 1.0, 0.0, 5.0), 9.0, 0, SQUARE),  # zero-width bbox
        Annotation(26, 777, 1, (1.0, 1.0, 5.0, 5.0), 9.0, 0, SQUARE),  # on an image that does not exist
    ]
    extra_refs = [
        Ref(10, 999, 1, 1, "train", (_sent(10, "ghost"),)),  # annotation does not exist
        Ref(11, 12, 555, 1, "val", (_sent(11, "lost"),)),  # image does not exist
        Ref(12, 13, 3, 2, "val", (_sent(12, "bike"),)),  # annotation 13 is a person
        Ref(13, 14, 1, 12, "val", (_sent(13, "sign"),)),  # 12 is not a COCO category id
    ]
    root = _build(tmp_path, extra_refs, bad_anns, strict=False)
    image_dir = root / DEFAULT_IMAGE_SUBDIR
    (image_dir / "COCO_train2014_000000000003.jpg").unlink()  # missing file
    (image_dir / "COCO_train2014_000000000002.jpg").write_bytes(b"not a jpeg" * 50)  # unreadable
    _jpeg(image_dir / "COCO_train2014_000000000001.jpg", 80, 48, 1)  # size differs from instances.json
    refs_file = root / "refcoco+" / "refs(unc).p"
    refs = pickle.loads(refs_file.read_bytes())
    refs[1]["sent_ids"] = [99]
    refs_file.write_bytes(pickle.dumps([*refs, dict(refs[0])], protocol=2))  # duplicate ref and sent ids

    report = inspect_source(load_source(root))
    found = _kinds(report.problems)
    expected = {
        ("missing_annotation", 10),
        ("missing_image", 11),
        ("annotation_image_mismatch", 11),
        ("duplicate_ref_id", 0),
        ("duplicate_sent_id", 0),
        ("duplicate_sent_id", 1),
        ("empty_polygon", 20),
        ("empty_polygon", 21),
        ("degenerate_polygon", 22),
        ("degenerate_polygon", 23),
        ("bbox_outside_image", 24),
        ("degenerate_bbox", 25),
        ("orphan_annotation", 26),
        ("category_mismatch", 12),
        ("category_mismatch", 13),
        ("unknown_category", 13),
        ("sent_ids_mismatch", 1),
        ("missing_image_file", 3),
        ("unreadable_image", 2),
        ("image_size_mismatch", 1),
    }
    assert found == expected
    assert {p.kind for p in report.problems} <= set(PROBLEM_KINDS)
    by_kind = {p.kind: p for p in report.problems}
    assert by_kind["missing_image_file"].file.endswith("COCO_train2014_000000000003.jpg")
    assert by_kind["bbox_outside_image"].file.endswith("instances.json")
    assert by_kind["missing_annotation"].file.endswith("refs(unc).p")
    assert "80x48" in by_kind["image_size_mismatch"].message
    assert report.to_dict()["problem_counts"]["empty_polygon"] == 2
    # problems are listed in a stable order
    assert [p.to_dict() for p in inspect_source(load_source(root)).problems] == [p.to_dict() for p in report.problems]


def test_truncated_image_found_only_by_deep(tmp_path: Path) -> None:
    root = _build(tmp_path)
    path = root / DEFAULT_IMAGE_SUBDIR / "COCO_train2014_000000000002.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    src = load_source(root)
    assert inspect_source(src, deep=False).problems == []
    deep = inspect_source(src, deep=True, workers=1)
    assert _kinds(deep.problems) == {("unreadable_image", 2)}
    assert deep.problems[0].file == str(path)


def test_rle_problems_and_missing_image_dir(tmp_path: Path) -> None:
    block = np.zeros((48, 64), dtype=np.uint8)
    block[2:9, 3:7] = 1
    counts = mask_utils.encode(np.asfortranarray(block))["counts"].decode("ascii")
    rle = {"counts": counts, "size": [48, 64]}
    wrong = {"counts": counts, "size": [10, 10]}
    anns = [
        Annotation(30, 3, 1, (0.0, 0.0, 5.0, 5.0), 1.0, 1, rle),
        Annotation(31, 3, 1, (0.0, 0.0, 5.0, 5.0), 1.0, 1, wrong),
    ]
    refs = [Ref(20, 30, 3, 1, "train", (_sent(20, "crowd"),))]
    root = _build(tmp_path, refs, anns)
    report = inspect_source(load_source(root, images=tmp_path / "elsewhere"))
    assert _kinds(report.problems) == {("referred_rle", 30), ("rle_size_mismatch", 31), ("missing_image_dir", None)}


# --- command line ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test app holding only the inspect verb."""

    inspect_cmd.register(app)
    return app


def _run(app: typer.Typer, *args: str) -> Any:
    return CliRunner().invoke(app, ["inspect", *map(str, args)])


def test_cli_json_and_table(app: typer.Typer, tmp_path: Path) -> None:
    root = _build(tmp_path)
    (root / DEFAULT_IMAGE_SUBDIR / "COCO_train2014_000000000003.jpg").unlink()
    result = _run(app, root, "--json", "--deep")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"refs", "expressions", "images", "annotations", "splits", "problems"} <= set(data)
    assert data["splits"]["val"] == {"refs": 1, "expressions": 3, "images": 1}
    assert data["problems"] == [
        {
            "kind": "missing_image_file",
            "file": str(root / DEFAULT_IMAGE_SUBDIR / "COCO_train2014_000000000003.jpg"),
            "id": 3,
            "message": "image 3: file not found",
        }
    ]

    table = _run(app, root)
    assert table.exit_code == 0
    assert "testA" in table.stdout and "missing_image_file 1" in table.stdout

    # --images points elsewhere: the same files copied there make the source clean
    other = tmp_path / "imgs"
    other.mkdir()
    for name in ("COCO_train2014_000000000001.jpg", "COCO_train2014_000000000002.jpg"):
        (other / name).write_bytes((root / DEFAULT_IMAGE_SUBDIR / name).read_bytes())
    _jpeg(other / "COCO_train2014_000000000003.jpg", 64, 48, 3)
    clean = _run(app, root, "--images", other, "--json")
    assert clean.exit_code == 0 and json.loads(clean.stdout)["problems"] == []
    assert "problems: none" in _run(app, root, "--images", other).stdout


def _assert_one_line_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


def test_cli_unusable_sources_exit_2(app: typer.Typer, tmp_path: Path) -> None:
    root = _build(tmp_path)
    inst = root / "refcoco+" / "instances.json"
    good = inst.read_text()
    _assert_one_line_error(_run(app, root, "--split-by", "umd"), "refs(umd).p")
    _assert_one_line_error(_run(app, root, "--images", tmp_path / "nope"), "--images")
    inst.write_text("{\"images\": [")
    _assert_one_line_error(_run(app, root), str(inst), "malformed JSON")
    inst.unlink()
    _assert_one_line_error(_run(app, root), str(inst))
    inst.write_text(good)
    (root / "refcoco+" / "refs(unc).p").write_bytes(pickle.dumps([{1, 2}], protocol=2))
    _assert_one_line_error(_run(app, root), "refs(unc).p", "refused")


class _Payload:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_installed_cli_refuses_hostile_pickle(tmp_path: Path) -> None:
    root = _build(tmp_path)
    marker = tmp_path / "pwned"
    refs_file = root / "refcoco+" / "refs(unc).p"
    refs_file.write_bytes(pickle.dumps([_Payload(f"touch {shlex.quote(str(marker))}")], protocol=2))
    proc = subprocess.run(
        [sys.executable, "-m", "comcoco", "inspect", str(root)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {refs_file}: refused: it asks for the global posix.system; nothing from the pickle was run"
    ]
    assert proc.stdout == ""
    assert not marker.exists()
