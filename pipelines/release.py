"""The release flow: ``comcoco.release.builder.RELEASE_STAGES`` walked with Prefect tasks.

A thin face: the stage list, the staging folder and its cleanup on failure all come from the builder;
this module only chooses the Prefect executor. Every task takes and returns paths, a version string and
small dicts; images are read and written inside the tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.runners import PrefectExecutor, configure_prefect

configure_prefect()

from prefect import flow  # noqa: E402

from comcoco.release.builder import ReleaseOptions, run_release_stages  # noqa: E402


@flow(name="comcoco-release", log_prints=False)
def release(workdir: str, releases: str, version: str, options: dict | None = None,
            validation: Any = None, progress: bool = False) -> dict[str, Any]:
    """Build ``releases/comcoco-<version>`` from ``workdir``; returns its path, counts and timings."""
    return run_release_stages(workdir, releases, version, ReleaseOptions(**(options or {})), PrefectExecutor(),
                              validation, progress)


def run_release(workdir: str | Path, releases: str | Path, version: str, options: ReleaseOptions | None = None,
                validate: Any = None, progress: bool = False) -> dict[str, Any]:
    """The Python entry point behind ``comcoco release``: run the release flow.

    ``validate`` is a ``comcoco.sahm.validate.ValidationOptions``, ``"module:function"``, or None.
    """
    to_dict = getattr(validate, "to_dict", None)
    return release(workdir=str(Path(workdir).resolve()), releases=str(Path(releases).resolve()), version=version,
                   options=(options or ReleaseOptions()).to_dict(),
                   validation=to_dict() if callable(to_dict) else validate, progress=progress)
