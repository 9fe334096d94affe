"""Compositing: cut an object from its source image, place and scale it, harmonize, paste.

Each sample yields a composite, its exact ground truth (the background without that object), a
binary mask and a metadata row; see ``docs/compose.md``. Modules by role: ``models`` (the learned
parts a configuration loads), ``cutout`` (geometry of cutting and pasting), ``engine`` (one composite,
pure), ``writer`` (encoding and files), ``samples`` (the table), ``run`` (the `compose` verb's path).
The configuration lives in ``comcoco.config``, planning in ``comcoco.plan``, decoding in
``comcoco.sources.images``; all are re-exported here under their old names.
"""

from importlib import import_module
from typing import Any

_HOMES: dict[str, str] = {
    "ComposeConfig": "comcoco.config",
    "ComposeConfigError": "comcoco.config",
    "ComposeModels": "comcoco.compose.models",
    "ComposedGroup": "comcoco.compose.engine",
    "ComposedSample": "comcoco.compose.engine",
    "Cutout": "comcoco.compose.cutout",
    "CutoutError": "comcoco.compose.cutout",
    "FIDELITY_RADIUS": "comcoco.compose.writer",
    "GroupPlan": "comcoco.plan",
    "IMAGE_FORMATS": "comcoco.config",
    "ImageCache": "comcoco.sources.images",
    "ImageLoadError": "comcoco.sources.images",
    "MASK_THRESHOLD": "comcoco.compose.cutout",
    "ObjectPlan": "comcoco.plan",
    "ObjectShape": "comcoco.compose.cutout",
    "PLACEMENT_METHODS": "comcoco.placement",
    "SAMPLES_SCHEMA": "comcoco.compose.samples",
    "SampleRow": "comcoco.compose.samples",
    "SamplesFileError": "comcoco.compose.samples",
    "SourceIndex": "comcoco.plan",
    "compose_group": "comcoco.compose.engine",
    "compose_sample": "comcoco.compose.engine",
    "cut_object": "comcoco.compose.cutout",
    "decode_image": "comcoco.sources.images",
    "dilated": "comcoco.compose.cutout",
    "encode_image": "comcoco.compose.writer",
    "load_models": "comcoco.compose.models",
    "object_shape": "comcoco.compose.cutout",
    "outside_error": "comcoco.compose.writer",
    "paste": "comcoco.compose.cutout",
    "plan_groups": "comcoco.plan",
    "rasterize_alpha": "comcoco.compose.cutout",
    "read_samples": "comcoco.compose.samples",
    "run_compose": "comcoco.compose.run",
    "select_candidates": "comcoco.plan",
    "write_group": "comcoco.compose.writer",
    "write_samples": "comcoco.compose.samples",
}


def __getattr__(name: str) -> Any:
    """Each name is imported from its home on first use (the package imports nothing eagerly, so
    ``comcoco.plan`` and the compose modules can import each other's parts without a cycle)."""
    try:
        return getattr(import_module(_HOMES[name]), name)
    except KeyError:
        raise AttributeError(f"module 'comcoco.compose' has no attribute {name!r}") from None


__all__ = [
    "FIDELITY_RADIUS",
    "IMAGE_FORMATS",
    "MASK_THRESHOLD",
    "PLACEMENT_METHODS",
    "SAMPLES_SCHEMA",
    "ComposeConfig",
    "ComposeConfigError",
    "ComposeModels",
    "ComposedGroup",
    "ComposedSample",
    "Cutout",
    "CutoutError",
    "GroupPlan",
    "ImageCache",
    "ImageLoadError",
    "ObjectPlan",
    "ObjectShape",
    "SampleRow",
    "SamplesFileError",
    "SourceIndex",
    "compose_group",
    "compose_sample",
    "cut_object",
    "decode_image",
    "dilated",
    "encode_image",
    "load_models",
    "object_shape",
    "outside_error",
    "paste",
    "plan_groups",
    "rasterize_alpha",
    "read_samples",
    "run_compose",
    "select_candidates",
    "write_group",
    "write_samples",
]
