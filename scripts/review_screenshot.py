"""Open a stage-1 (placement) review task in headless Chromium and save a PNG of it.

    python scripts/review_screenshot.py [--workdir WD] [--out PNG]

Talks to the Label Studio server configured like ``scripts/label_studio.sh`` (``COMCOCO_LS_*``; start
it with ``make label-studio``). With ``--workdir``, the first task of that work directory's placement
project is shown (push it first); without, a small demo work directory is built under the server's
document root and pushed. Then Chromium (the Debian package, ``/usr/bin/chromium``, driven by
Playwright) logs in as the admin user, opens the task and saves the page. Shows what an annotator
sees: the composite, the proposed box, the expressions, the score and the decision buttons.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comcoco.review.process import wait_until_ready  # noqa: E402
from comcoco.review.push import push, read_projects, read_tasks  # noqa: E402
from comcoco.review.server import ReviewServer  # noqa: E402
from comcoco.review.settings import LabelStudioError, ServerSettings  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def demo_workdir(settings: ServerSettings) -> Path:
    """A 12-image demo source built (6 samples) under the document root; reused when present."""
    from comcoco.build import build_inline
    from comcoco.plan import BuildConfig, SourceSpec
    from comcoco.sources.demo import generate_demo_source
    from comcoco.workdir import STATUS_FILE

    base = settings.document_root / "review-screenshot"
    workdir = base / "work"
    if not (workdir / STATUS_FILE).is_file():
        source = base / "source"
        if not (source / "refcoco+").is_dir():
            generate_demo_source(source, n_images=12, seed=0)
        build_inline(SourceSpec(root=str(source.resolve())), workdir, BuildConfig(limit=6, shard_size=6, seed=0))
    return workdir


def first_placement_task(server: ReviewServer, settings: ServerSettings, workdir: Path) -> tuple[int, int]:
    """(project id, task id) of the most doubtful stage-1 task of ``workdir``, pushing if needed."""
    if "placement" not in read_projects(workdir):
        push(workdir, "placement", server, settings.document_root)
    pid = int(read_projects(workdir)["placement"]["id"])
    tasks = [t for t in read_tasks(workdir) if t.stage == "placement" and t.project_id == pid]
    if not tasks:
        push(workdir, "placement", server, settings.document_root)
        tasks = [t for t in read_tasks(workdir) if t.stage == "placement" and t.project_id == pid]
    if not tasks:
        raise LabelStudioError(f"{workdir}: no placement task to show (is anything built?)")
    return pid, min(t.task_id for t in tasks)


def screenshot(settings: ServerSettings, project: int, task: int, out: Path, timeout_ms: int = 90_000) -> None:
    from playwright.sync_api import sync_playwright

    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(timeout_ms)
            page.goto(f"{settings.url}/user/login/")
            page.fill("input[name=email]", settings.username)
            page.fill("input[name=password]", settings.password)
            with page.expect_navigation():
                page.click("button[type=submit], input[type=submit]")
            if "/user/login" in page.url:
                raise LabelStudioError("login to Label Studio failed (check COMCOCO_LS_USERNAME / COMCOCO_LS_PASSWORD)")
            page.goto(f"{settings.url}/projects/{project}/data?task={task}")
            # The labeling interface is ready when the composite is drawn and the decision choices are shown.
            page.wait_for_selector("img[src*='local-files'], canvas", state="visible")
            page.get_by_text("Is the placement plausible?").first.wait_for(state="visible")
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out), full_page=False)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="work directory whose placement task to show (default: a demo)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "review-screenshot.png", help="PNG to write")
    args = ap.parse_args(argv)
    try:
        settings = ServerSettings.from_env()
        wait_until_ready(settings.url, timeout=30.0)
        server = ReviewServer.from_settings(settings)
        workdir = args.workdir if args.workdir is not None else demo_workdir(settings)
        project, task = first_placement_task(server, settings, workdir)
        screenshot(settings, project, task, args.out)
    except LabelStudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved {args.out} (project {project}, task {task})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
