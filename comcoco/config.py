"""What decides a build's output: the composing configuration, the build configuration, the source.

``ComposeConfig`` decides a sample's pixels; its fingerprint goes into every sample id, so two runs
with the same configuration name their samples alike and a changed option can never pass for the old
one. ``BuildConfig`` adds matching, the sample limit and sharding: it is frozen into ``plan.json`` and
a resume must agree with it. ``SourceSpec`` says where the source lives. This module sits low (below
the plan and the compose engine) so both can speak of the configuration without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from comcoco.errors import ComcocoError
from comcoco.harmonize import HARMONIZE_METHODS
from comcoco.ids import stable_id
from comcoco.placement import PLACEMENT_METHODS

DEFAULT_SHARD_SIZE = 256
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpeg")
# The lossless writer (docs/compose.md, "Encoders"): fpng writes a standard PNG about ten times faster than
# zlib at level 1, files about a quarter larger; opencv is libpng through OpenCV at --png-level, the writer
# of every build before encoders could be chosen (so its fingerprint leaves the encoder out).
ENCODERS: tuple[str, ...] = ("fpng", "opencv")
LEGACY_ENCODER = "opencv"


def default_encoder(profile: str) -> str:
    """fpng, except for the paper profile, whose promise is the bytes comcoco wrote before (opencv)."""
    return LEGACY_ENCODER if profile == "paper" else "fpng"

# paper: the ComCOCO paper's recipe — one object per composite, pasted as cut (no shadow, no rim
# refinement, no camera matching). robust: several distinguishable targets per composite, each with its
# shadow, a refined matte and the scene's noise, blur and JPEG grid, so the pasted object does not give
# itself away (docs/compose.md). robust is the default.
PROFILES: tuple[str, ...] = ("robust", "paper")
TARGETS_PER_COMPOSITE = {"robust": 3, "paper": 1}  # objects per composite when not given
# Look-alikes pasted per target that no sample refers to (comcoco.matching.decoys): with them, finding
# the pasted objects is not finding the target (docs/compose.md, "Decoys").
DECOYS_PER_TARGET = {"robust": 1, "paper": 0}


class ComposeConfigError(ComcocoError, ValueError):
    """An unusable compose configuration (unknown method, missing checkpoint, bad number)."""


@dataclass(frozen=True)
class ComposeConfig:
    """Everything that decides a sample's pixels; its fingerprint goes into every sample id."""

    seed: int = 0
    placement: str = "prior"
    harmonize: str = "fit"
    objects_per_image: int | None = None  # None: the profile's (robust 3, paper 1)
    candidates_per_ref: int = 1
    image_format: str = "png"
    jpeg_quality: int = 95
    png_compression: int = 1
    placement_k: int = 8
    graconet_ckpt: str | None = None
    harmonizer_ckpt: str | None = None
    profile: str = "robust"
    encoder: str | None = None  # None: the profile's (robust fpng; paper opencv, the bytes of earlier builds)
    decoys: int | None = None  # look-alikes per target; None: the profile's (robust 1, paper 0)

    def __post_init__(self) -> None:
        if self.objects_per_image is None:
            object.__setattr__(self, "objects_per_image", TARGETS_PER_COMPOSITE.get(self.profile, 1))
        if self.decoys is None:
            object.__setattr__(self, "decoys", DECOYS_PER_TARGET.get(self.profile, 0))
        if self.encoder is None:
            object.__setattr__(self, "encoder", default_encoder(self.profile))

    @property
    def robust(self) -> bool:
        return self.profile == "robust"

    def fingerprint(self) -> str:
        """Stable id of all fields: same config → same id on every machine.

        The paper profile's id leaves ``profile`` out, so it names its samples exactly as comcoco did
        before profiles existed (its output is byte-identical to that recipe's); the opencv encoder's id
        leaves ``encoder`` out for the same reason (it writes the bytes every build wrote before), and
        no decoys leaves ``decoys`` out (the composites of robust builds before decoys existed).
        """
        fields_ = asdict(self)
        if not self.decoys:
            fields_.pop("decoys")
        if self.profile == "paper":
            fields_.pop("profile")
        if self.encoder == LEGACY_ENCODER:
            fields_.pop("encoder")
        return stable_id("compose-config", fields_)

    @property
    def image_ext(self) -> str:
        return "png" if self.image_format == "png" else "jpg"

    def validate(self) -> None:
        """Raise ComposeConfigError before any work if the configuration cannot run."""
        if self.profile not in PROFILES:
            raise ComposeConfigError(f"unknown profile {self.profile!r} (choose {'|'.join(PROFILES)})")
        if self.placement not in PLACEMENT_METHODS:
            raise ComposeConfigError(f"unknown placement {self.placement!r} (choose {'|'.join(PLACEMENT_METHODS)})")
        if self.harmonize not in HARMONIZE_METHODS:
            raise ComposeConfigError(f"unknown harmonize method {self.harmonize!r} (choose {'|'.join(HARMONIZE_METHODS)})")
        if self.encoder not in ENCODERS:
            raise ComposeConfigError(f"unknown encoder {self.encoder!r} (choose {'|'.join(ENCODERS)})")
        if self.image_format not in IMAGE_FORMATS:
            raise ComposeConfigError(f"unknown image format {self.image_format!r} (choose png|jpeg)")
        if self.objects_per_image < 1:
            raise ComposeConfigError(f"objects per image must be at least 1, got {self.objects_per_image}")
        if self.decoys < 0:
            raise ComposeConfigError(f"decoys per target must be at least 0, got {self.decoys}")
        if self.decoys and not self.robust:
            raise ComposeConfigError("--decoys needs --profile robust (the paper profile pastes its objects as the "
                                     "paper did, with no look-alikes)")
        if self.candidates_per_ref < 1:
            raise ComposeConfigError(f"candidates per ref must be at least 1, got {self.candidates_per_ref}")
        if self.robust and self.candidates_per_ref != 1:
            raise ComposeConfigError("--candidates-per-ref above 1 needs --profile paper (robust composites use "
                                     "each object once, grouped with distinguishable others)")
        if self.placement_k < 1:
            raise ComposeConfigError(f"placement proposals must be at least 1, got {self.placement_k}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ComposeConfigError(f"JPEG quality must be in 1..100, got {self.jpeg_quality}")
        if not 0 <= self.png_compression <= 9:
            raise ComposeConfigError(f"PNG compression must be in 0..9, got {self.png_compression}")
        if self.placement == "graconet":
            if not self.graconet_ckpt:
                raise ComposeConfigError("--placement graconet needs --graconet-ckpt PATH (a GracoNet checkpoint)")
            if not Path(self.graconet_ckpt).is_file():
                raise ComposeConfigError(f"GracoNet checkpoint not found: {self.graconet_ckpt}")
        if self.harmonize == "network":
            if not self.harmonizer_ckpt:
                raise ComposeConfigError("--harmonize network needs --harmonizer-ckpt PATH (a Harmonizer checkpoint)")
            if not Path(self.harmonizer_ckpt).is_file():
                raise ComposeConfigError(f"Harmonizer checkpoint not found: {self.harmonizer_ckpt}")


class BuildConfigError(ComcocoError, ValueError):
    """A build configuration that cannot run (the message names the option)."""


@dataclass(frozen=True)
class SourceSpec:
    """Where the source lives; paths are stored absolute so any worker process can open it."""

    root: str
    dataset: str = "refcoco+"
    split_by: str = "unc"
    images: str | None = None
    image_root: str | None = None  # symlinks in the image folder may lead anywhere below it

    def load(self) -> Any:
        from comcoco.sources.refer import load_source

        return load_source(self.root, dataset=self.dataset, split_by=self.split_by, images=self.images,
                           image_root=self.image_root)


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides what a build produces (and so what a resume must agree with)."""

    seed: int = 0
    k: int = 5
    similarity: str = "max"
    max_uses: int | None = None
    match_within_splits: bool = True  # backgrounds only from the object's own source split group
    limit: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    compose: ComposeConfig | None = None  # None: the default composing configuration with this seed

    def __post_init__(self) -> None:
        if self.compose is None:
            object.__setattr__(self, "compose", ComposeConfig(seed=self.seed))
        if self.compose.seed != self.seed:  # one seed drives matching and composing
            raise BuildConfigError(f"compose seed {self.compose.seed} differs from build seed {self.seed}")
        if self.shard_size < 1:
            raise BuildConfigError(f"shard size must be at least 1, got {self.shard_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildConfig:
        data = dict(data)
        compose_fields = data.pop("compose", None)
        if compose_fields is None:
            compose = None
        else:  # a plan made before profiles (encoders, decoys) existed: the paper recipe, opencv, no decoys
            compose = ComposeConfig(**{"profile": "paper", "encoder": LEGACY_ENCODER, "decoys": 0, **compose_fields})
        known = {f.name for f in fields(cls)}
        return cls(compose=compose, **{k: v for k, v in data.items() if k in known})

    def fingerprint(self) -> str:
        return stable_id("build-config", self.to_dict())

    def match_options(self) -> Any:
        """The scene-matching part of this configuration (a ``comcoco.matching.source.MatchOptions``)."""
        from comcoco.matching.source import MatchOptions

        return MatchOptions(k=self.k, seed=self.seed, similarity=self.similarity, max_uses=self.max_uses,
                            within_splits=self.match_within_splits)
