"""The annotator guidelines (``annotations/guidelines.md``) as a Label Studio project instruction.

Label Studio shows a project's instruction (HTML) before an annotator starts labeling and behind the
*Instructions* button of the labeling view. Each stage's project gets the guidelines' introduction
and that stage's section, rendered from the one Markdown file, so what annotators read on screen is
what the repository says.
"""

from __future__ import annotations

import re

from comcoco.review.bookkeeping import STAGES
from comcoco.review.settings import REPO

GUIDELINES = REPO / "annotations" / "guidelines.md"
SECTION_TITLES = {"placement": "## Stage 1", "expressions": "## Stage 2"}


def stage_guidelines(stage: str, text: str | None = None) -> str:
    """The Markdown an annotator of ``stage`` needs: the introduction and the stage's own section."""
    text = GUIDELINES.read_text() if text is None else text
    parts = re.split(r"(?m)^(?=## )", text)
    intro = parts[0]
    own = [p for p in parts[1:] if p.startswith(SECTION_TITLES[stage])]
    return intro.rstrip() + "\n\n" + "".join(own).rstrip() + "\n"


def instruction_html(stage: str) -> str:
    """The stage's guidelines as HTML for the project's ``expert_instruction``."""
    from markdown_it import MarkdownIt

    if stage not in STAGES:
        raise ValueError(f"unknown review stage {stage!r}")
    body = MarkdownIt("commonmark").enable("table").render(stage_guidelines(stage))
    style = ("<style>.comcoco-guidelines table{border-collapse:collapse}"
             ".comcoco-guidelines td,.comcoco-guidelines th{border:1px solid #ccc;padding:2px 6px}</style>")
    return f'{style}<div class="comcoco-guidelines">{body}</div>'
