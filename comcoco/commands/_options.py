"""Option groups shared by several verbs, declared once.

``compose_options`` gives ``build`` and ``compose`` the same composing options (one object,
``ComposeOptions``, reaches the verb), so no option can exist on one and be silently missing on the
other. Output locations are ``-o/--out`` on every verb.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import typer

from comcoco.config import ENCODERS, IMAGE_FORMATS, ComposeConfig, ComposeConfigError
from comcoco.harmonize import HARMONIZE_METHODS
from comcoco.placement import PLACEMENT_METHODS


def image_root_option() -> Any:
    """Where symlinks in the image folder may lead (a symlink farm); without it images stay inside it."""
    return typer.Option(None, "--image-root", help="Allow images that are symlinks into this folder (a symlink "
                        "farm); without it every image must resolve inside the image folder.")


def check_image_root(image_root: Path | None) -> str | None:
    """The declared image root as an absolute path (it must be a folder)."""
    from comcoco.commands._common import UserError

    if image_root is None:
        return None
    if not image_root.is_dir():
        raise UserError(f"{image_root}: --image-root is not a folder")
    return str(image_root.resolve())


def out_option(help: str, required: bool = True) -> Any:
    """The output location of a verb: ``-o/--out`` everywhere."""
    return typer.Option(... if required else None, "-o", "--out", help=help)


@dataclass(frozen=True)
class ComposeOptions:
    """The composing options of ``build`` and ``compose``, as the CLI received them."""

    profile: str = "robust"
    placement: str = "prior"
    graconet_ckpt: Path | None = None
    harmonize: str = "fit"
    harmonizer_ckpt: Path | None = None
    objects_per_image: int | None = None
    candidates_per_ref: int = 1
    image_format: str = "png"
    jpeg_quality: int = 95
    encoder: str | None = None  # None: the profile's (robust fpng, paper opencv)
    png_level: int | None = None  # None: 1 (--encoder opencv only)
    decoys: int | None = None  # None: the profile's (robust 1, paper 0)

    def check_paths(self) -> None:
        """A checkpoint the user named that is not a file is refused input (exit 3), not a usage error."""
        from comcoco.commands._common import UserError

        for option, path in (("--graconet-ckpt", self.graconet_ckpt), ("--harmonizer-ckpt", self.harmonizer_ckpt)):
            if path is not None and not path.is_file():
                raise UserError(f"{path}: {option} is not a file" if path.exists() else f"{path}: no such {option} file")

    def config(self, seed: int) -> ComposeConfig:
        """The compose configuration; checkpoint paths are made absolute so any worker can open them."""
        config = ComposeConfig(
            seed=seed, profile=self.profile, placement=self.placement, harmonize=self.harmonize,
            objects_per_image=self.objects_per_image, candidates_per_ref=self.candidates_per_ref,
            image_format=self.image_format, jpeg_quality=self.jpeg_quality, encoder=self.encoder,
            png_compression=1 if self.png_level is None else self.png_level, decoys=self.decoys,
            graconet_ckpt=str(self.graconet_ckpt.resolve()) if self.graconet_ckpt else None,
            harmonizer_ckpt=str(self.harmonizer_ckpt.resolve()) if self.harmonizer_ckpt else None,
        )
        if self.png_level is not None and config.encoder != "opencv":  # the profile's encoder, when not named
            raise ComposeConfigError(f"--png-level sets the zlib level of --encoder opencv; --encoder "
                                     f"{config.encoder} has no level (leave --png-level out, or add --encoder opencv)")
        return config

_COMPOSE_PARAMS: dict[str, tuple[Any, Any]] = {
    "profile": (str, typer.Option("robust", "--profile", help="robust (default): several distinguishable targets "
                                  "per composite, shadows, refined mattes, the scene's camera; paper: the paper's "
                                  "recipe, one object pasted as cut. See docs/compose.md.")),
    "placement": (str, typer.Option("prior", "--placement", help=f"Placement: {'|'.join(PLACEMENT_METHODS)}.")),
    "graconet_ckpt": (Path | None, typer.Option(None, "--graconet-ckpt", help="GracoNet checkpoint (for --placement graconet).")),
    "harmonize": (str, typer.Option("fit", "--harmonize", help=f"Harmonization: {'|'.join(HARMONIZE_METHODS)}.")),
    "harmonizer_ckpt": (Path | None, typer.Option(None, "--harmonizer-ckpt", help="Harmonizer checkpoint (for --harmonize network).")),
    "objects_per_image": (int | None, typer.Option(None, "--objects-per-image", min=1, help="Objects pasted into one background (default: robust 3, paper 1).")),
    "candidates_per_ref": (int, typer.Option(1, "--candidates-per-ref", min=1, help="Backgrounds used per object (best ranks first).")),
    "image_format": (str, typer.Option("png", "--image-format", help=f"{'|'.join(IMAGE_FORMATS)}: png keeps pairs lossless; jpeg is smaller and reports the outside-mask error.")),
    "jpeg_quality": (int, typer.Option(95, "--jpeg-quality", min=1, max=100, help="JPEG quality for --image-format jpeg.")),
    "encoder": (str | None, typer.Option(None, "--encoder", help=f"Lossless PNG writer: {'|'.join(ENCODERS)} (default: fpng "
                                         "for --profile robust, opencv for --profile paper, which so writes the bytes of "
                                         "earlier builds). fpng is about 20x faster, files about a quarter larger; opencv "
                                         "is libpng at --png-level (smaller files). See docs/compose.md.")),
    "png_level": (int | None, typer.Option(None, "--png-level", min=0, max=9, help="PNG zlib level for --encoder opencv "
                                           "(default 1: fast; 0: no compression, 2x size; 9: smallest, slowest).")),
    "decoys": (int | None, typer.Option(None, "--decoys", min=0, help="Look-alikes per target pasted from its own "
                                        "photo that no sample refers to (default: robust 1, paper 0), so finding the "
                                        "pastes is not finding the target. See docs/compose.md.")),
}
assert list(_COMPOSE_PARAMS) == [f.name for f in fields(ComposeOptions)]


def compose_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the compose options to a verb; it receives them as one ``compose: ComposeOptions`` argument."""
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.name != "compose"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
             for name, (ann, opt) in _COMPOSE_PARAMS.items()]

    @functools.wraps(fn)
    def verb(*args: Any, **kwargs: Any) -> Any:
        kwargs["compose"] = ComposeOptions(**{k: kwargs.pop(k) for k in _COMPOSE_PARAMS})
        return fn(*args, **kwargs)

    verb.__signature__ = sig.replace(parameters=own + extra)  # type: ignore[attr-defined]
    hints = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if k != "compose"}
    verb.__annotations__ = hints | {name: ann for name, (ann, _) in _COMPOSE_PARAMS.items()}
    del verb.__wrapped__  # typer must see the new signature, not the wrapped function's
    return verb
