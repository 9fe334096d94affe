"""The release flow: ``comcoco.release.builder.RELEASE_STAGES`` walked with Prefect tasks.

A thin face: the stage list, the staging folder and its cleanup on failure all come from the builder;
this module chooses the Prefect executor, logs the outcome through the run logger and publishes a
short Markdown summary (counts per variant and split, the comparison with the previous release).
Every task takes and returns paths, a version string and small dicts; images are read and written
inside the tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.api_server import with_prefect_api
from pipelines.runners import PrefectExecutor, configure_prefect

configure_prefect()

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from comcoco.release.builder import ReleaseOptions, run_release_stages  # noqa: E402

SUMMARY_KEY = "comcoco-release-summary"


def summary_markdown(version: str, result: dict[str, Any]) -> str:
    lines = [f"# comcoco release {version}", "", f"Published: `{result['release']}`", "",
             "| split | samples |", "|---|---:|"]
    lines += [f"| {split} | {v['samples']} |" for split, v in result["selection"].items()]
    compared = result["manifest"].get("compared")
    lines += ["", "## Compared with the previous release", ""]
    if compared is None:
        lines.append("The first release in this folder.")
    else:
        lines.append(f"{compared['previous']} → {version}: {compared['summary']}.")
        lines += [f"- configuration: {c}" for c in compared["config_changes"]] or ["- configuration: unchanged"]
        if compared["identical_data"]:
            lines += ["", f"**{compared['note']}**"]
    lines += ["", "## Seconds per stage", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in result["seconds"].items()]
    return "\n".join(lines) + "\n"


@flow(name="comcoco-release", log_prints=False)
def release(workdir: str, releases: str, version: str, options: dict | None = None,
            validation: Any = None, progress: bool = False, workers: int | None = None,
            pack: bool = True) -> dict[str, Any]:
    """Build ``releases/comcoco-<version>`` from ``workdir``; returns its path, counts and timings."""
    logger = get_run_logger()
    logger.info("releasing %s from %s into %s", version, workdir, releases)
    result = run_release_stages(workdir, releases, version, ReleaseOptions(**(options or {})), PrefectExecutor(),
                                validation, progress, workers, pack)
    compared = result["manifest"].get("compared")
    if compared is not None and compared["identical_data"]:
        logger.warning("%s", compared["note"])
    logger.info("release %s published at %s (%s)", version, result["release"],
                ", ".join(f"{s} {v['samples']}" for s, v in result["selection"].items()))
    create_markdown_artifact(summary_markdown(version, result), key=SUMMARY_KEY,
                             description=f"comcoco release {version}")
    return result


@with_prefect_api
def run_release(workdir: str | Path, releases: str | Path, version: str, options: ReleaseOptions | None = None,
                validate: Any = None, progress: bool = False, workers: int | None = None,
                pack: bool = True) -> dict[str, Any]:
    """The Python entry point behind ``comcoco release``: run the release flow.

    ``validate`` is a ``comcoco.sahm.validate.ValidationOptions``, ``"module:function"``, or None;
    ``workers`` export processes (None: every core), which never change a byte of the release;
    ``pack=False`` publishes it without ``dist/``.
    """
    to_dict = getattr(validate, "to_dict", None)
    return release(workdir=str(Path(workdir).resolve()), releases=str(Path(releases).resolve()), version=version,
                   options=(options or ReleaseOptions()).to_dict(),
                   validation=to_dict() if callable(to_dict) else validate, progress=progress, workers=workers,
                   pack=pack)
