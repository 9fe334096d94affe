"""What an annotator sees, in headless Chromium: both review stages, a second look, the guidelines.

    python scripts/review_screenshot.py --workdir WD [--out-dir DIR]

Talks to the Label Studio server configured like ``scripts/label_studio.sh`` (``COMCOCO_LS_*``; start it
with ``make label-studio``). ``WD`` is a built work directory under the server's document root
(``make review-screenshot`` builds the demo source there). The script pushes stage 1, answers one task
with an *adjust* through the API and pulls, so the recomposed sample comes back as a round-2 task; then
it accepts another, pushes stage 2, and logs in as the admin with Chromium (the Debian package,
``/usr/bin/chromium``, driven by Playwright) to save:

* ``review-placement.png``   — the round-2 look task: the look line, composite, box, expressions, score,
  the decisions with their meanings, the short guidelines;
* ``review-reject-reason.png`` — a round-1 task after choosing *reject* and submitting without a reason:
  Label Studio's refusal (the script checks that no annotation was saved);
* ``review-instructions.png`` — the project's instruction (the stage's guidelines) opened from the
  *Instructions* button;
* ``review-expressions.png``  — a stage-2 task: expressions to keep, proposed spatial phrases, guidelines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comcoco.review.bookkeeping import read_projects  # noqa: E402
from comcoco.review.process import wait_until_ready  # noqa: E402
from comcoco.review.pull import pull  # noqa: E402
from comcoco.review.push import push  # noqa: E402
from comcoco.review.server import ReviewServer  # noqa: E402
from comcoco.review.settings import LabelStudioError, ServerSettings  # noqa: E402
from comcoco.workdir import Workdir  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _decision(value: str, box: tuple[int, int, int, int] | None = None, size: tuple[int, int] | None = None) -> list[dict]:
    res = [{"from_name": "decision", "to_name": "image", "type": "choices", "value": {"choices": [value]}}]
    if box is not None and size is not None:
        (x, y, w, h), (W, H) = box, size
        res.append({"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": W,
                    "original_height": H, "value": {"x": 100 * x / W, "y": 100 * y / H, "width": 100 * w / W,
                                                    "height": 100 * h / H, "rotation": 0, "rectanglelabels": ["object"]}})
    return res


def prepare(server: ReviewServer, settings: ServerSettings, workdir: Path) -> dict[str, tuple[int, int]]:
    """Push, adjust one sample and accept another (as a reviewer would), pull, push stage 2; returns
    (project, task) of what to show."""
    from PIL import Image

    root = settings.document_root
    push(workdir, "placement", server, root)
    pid = int(read_projects(workdir)["placement"]["id"])
    tasks = {(t["data"]["sample_id"], t["data"]["round"]): t for t in server.list_tasks(pid)}
    rows = Workdir(workdir).status_by_id()
    firsts = sorted((t["id"], sid) for (sid, rnd), t in tasks.items() if rnd == 0)
    if len(firsts) < 3:
        raise LabelStudioError(f"{workdir}: at least three built samples are needed, found {len(firsts)}")
    looked = [sid for (sid, rnd) in tasks if rnd > 0]
    if not looked:
        for tid, sid in firsts:  # adjust the first sample whose box can move sideways by 10 % of the image
            row = rows[sid]
            with Image.open(workdir / row.composite) as im:
                W, H = im.size
            x, y, w, h = row.box
            dx = max(8, W // 10)
            nx = x + dx if x + dx + w <= W else x - dx
            if nx >= 0:
                server.annotate(tid, _decision("adjust", (nx, y, w, h), (W, H)))
                break
        server.annotate(firsts[-1][0], _decision("accept"))
        rep = pull(workdir, "placement", server, root)
        if rep.errors or not rep.sent_back:
            raise LabelStudioError(f"the adjust was not applied: {rep.errors or 'nothing sent back'}")
        tasks = {(t["data"]["sample_id"], t["data"]["round"]): t for t in server.list_tasks(pid)}
        looked = [sid for (sid, rnd) in tasks if rnd > 0]
    look = next(t for (sid, rnd), t in tasks.items() if rnd > 0)
    open_first = next(tid for tid, sid in firsts if not tasks[(sid, 0)].get("total_annotations")
                      and (sid, 1) not in tasks and sid != firsts[-1][1])
    push(workdir, "expressions", server, root)
    pid2 = int(read_projects(workdir)["expressions"]["id"])
    t2 = min(t["id"] for t in server.list_tasks(pid2))
    return {"placement": (pid, look["id"]), "reject": (pid, open_first), "expressions": (pid2, t2)}


def shoot(settings: ServerSettings, server: ReviewServer, targets: dict[str, tuple[int, int]], out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(f"{settings.url}/user/login/")
            page.fill("input[name=email]", settings.username)
            page.fill("input[name=password]", settings.password)
            with page.expect_navigation():
                page.click("button[type=submit], input[type=submit]")
            if "/user/login" in page.url:
                raise LabelStudioError("login to Label Studio failed (check COMCOCO_LS_USERNAME / COMCOCO_LS_PASSWORD)")

            def open_task(project: int, task: int, ready: str) -> None:
                page.goto(f"{settings.url}/projects/{project}/data?task={task}")
                page.get_by_text(ready).first.wait_for(state="visible")
                page.wait_for_selector("img[src*='local-files'], canvas", state="visible")
                page.wait_for_load_state("networkidle")
                page.wait_for_timeout(1500)

            open_task(*targets["placement"], "Guidelines in short")
            page.get_by_text("look again").first.wait_for(state="visible")
            saved.append(out / "review-placement.png")
            page.screenshot(path=str(saved[-1]))

            open_task(*targets["reject"], "Guidelines in short")
            page.get_by_text("reject: implausible").first.click()
            page.get_by_role("button", name="Submit").first.click()
            page.get_by_text("A reject needs a reason").first.wait_for(state="visible")
            page.wait_for_timeout(500)
            saved.append(out / "review-reject-reason.png")
            page.screenshot(path=str(saved[-1]))
            if server.sdk.annotations.list(id=targets["reject"][1]):
                raise LabelStudioError("a reject without a reason was saved: the labeling config does not require one")
            page.get_by_role("button", name="OK").first.click()

            page.get_by_role("button", name="Instructions").first.click()
            page.get_by_text("What counts as implausible").first.wait_for(state="visible")
            page.wait_for_timeout(500)
            saved.append(out / "review-instructions.png")
            page.screenshot(path=str(saved[-1]))

            open_task(*targets["expressions"], "Guidelines in short")
            saved.append(out / "review-expressions.png")
            page.screenshot(path=str(saved[-1]))
        finally:
            browser.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="a built work directory under the document root")
    ap.add_argument("--out-dir", type=Path, default=REPO / "runs", help="where the PNGs go")
    args = ap.parse_args(argv)
    try:
        settings = ServerSettings.from_env()
        wait_until_ready(settings.url, timeout=30.0)
        server = ReviewServer.from_settings(settings)
        targets = prepare(server, settings, args.workdir)
        saved = shoot(settings, server, targets, args.out_dir)
    except LabelStudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for p in saved:
        print(f"saved {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
