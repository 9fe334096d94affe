"""Several annotators on Label Studio Community: accounts, who gets which task, the seeded overlap.

Label Studio Community has no task assignment, so assignment is done with what it has:

* **accounts** are made through the organization's invitation link (``add_annotator``: the sign-up a
  person would do), so an annotator logs in with e-mail and password;
* **one task per annotator**: a sample in the overlap gets two tasks of the same round (slot 0 and
  slot 1), each meant for a different annotator; every task carries ``data.annotator``;
* **one Data Manager tab per annotator** in each stage's project, filtered on ``data.annotator``: the
  annotator opens their tab and labels its tasks (*Label Tasks As Displayed*). An annotation by
  someone else on a task is still recorded, under its real author.

Which samples overlap and who answers is seeded: a sample is in the overlap when a hash of (seed,
sample id) falls below the overlap fraction — so its membership never changes when more samples are
pushed later — and each (sample, round) orders the team by another hash: slot 0 goes to the first,
slot 1 to the second, a third look to the first who did not answer the round.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from comcoco.decisions import SLOT_SECOND, SLOT_THIRD
from comcoco.ids import stable_hash64
from comcoco.review.bookkeeping import ReviewError
from comcoco.review.server import ReviewServer

ALL = "all"  # --annotator all: every account on the server except the token's own


@dataclass(frozen=True)
class Team:
    """Who reviews a stage and how much overlaps (kept in ``projects.json`` for later pushes)."""

    annotators: tuple[str, ...] = ()  # e-mails, sorted; empty: every task is open to anyone
    overlap: float = 0.0
    seed: int = 0
    removed: tuple[str, ...] = field(default=(), compare=False)  # members whose account is gone (this push)

    def to_dict(self) -> dict[str, Any]:
        return {"annotators": list(self.annotators), "overlap": self.overlap, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Team:
        d = d or {}
        return cls(tuple(sorted(d.get("annotators") or ())), float(d.get("overlap") or 0.0), int(d.get("seed") or 0))

    def in_overlap(self, sample_id: str) -> bool:
        """True for the seeded share ``overlap`` of samples (a second annotator answers them too)."""
        if len(self.annotators) < 2 or self.overlap <= 0:
            return False
        return stable_hash64("review-overlap", self.seed, sample_id) < self.overlap * 2**64

    def order(self, sample_id: str, round_: int) -> list[str]:
        return sorted(self.annotators, key=lambda e: (stable_hash64("review-assign", self.seed, sample_id, round_, e), e))

    def assignee(self, sample_id: str, round_: int, slot: int, exclude: Collection[str] = ()) -> str:
        """The annotator a task is meant for ("" when the team is empty)."""
        order = self.order(sample_id, round_)
        if not order:
            return ""
        if slot == SLOT_SECOND:
            return order[1 % len(order)]
        if slot == SLOT_THIRD:
            return next((e for e in order if e not in exclude), order[0])
        return order[0]


def choose_team(server: ReviewServer, stored: Team, annotators: Sequence[str] | None, overlap: float | None,
                seed: int | None, default_seed: int) -> Team:
    """The team for this push: the given annotators (``all`` = every account but the token's own) or the
    stored ones, minus accounts that are gone; the overlap and seed given or stored."""
    users = {e.lower(): e for e in server.users(refresh=True).values() if e}
    if annotators is None:
        wanted, given = list(stored.annotators), False
    elif [a.lower() for a in annotators] == [ALL]:
        me = server.whoami()["email"].lower()
        wanted, given = [e for k, e in users.items() if k != me], True
    else:
        wanted, given = list(annotators), True
    unknown = [a for a in wanted if a.lower() not in users]
    if given and unknown:
        raise ReviewError(f"annotator(s) {', '.join(unknown)} have no account on {server.url} "
                          "(create one with `comcoco review users add EMAIL`)")
    members = tuple(sorted({users[a.lower()] for a in wanted if a.lower() in users}))
    share = stored.overlap if overlap is None else float(overlap)
    if not 0.0 <= share <= 1.0:
        raise ReviewError(f"--overlap must be a fraction between 0 and 1, got {share}")
    if share > 0 and len(members) < 2:
        raise ReviewError(f"--overlap {share:g} needs at least two annotators (give --annotator twice or more, "
                          f"or --annotator all); the team is {', '.join(members) or 'empty'}")
    chosen_seed = stored.seed if seed is None and (stored.annotators or stored.overlap) else seed
    return Team(members, share, default_seed if chosen_seed is None else int(chosen_seed),
                removed=tuple(sorted(unknown)) if not given else ())


def add_annotator(server: ReviewServer, email: str, password: str) -> int:
    """Create an annotator account (through the invitation link); returns its user id."""
    if "@" not in email:
        raise ReviewError(f"{email!r} is not an e-mail address")
    if any(e.lower() == email.lower() for e in server.users(refresh=True).values()):
        raise ReviewError(f"{email} already has an account on {server.url}")
    return server.sign_up(email, password)


def remove_annotator(server: ReviewServer, email: str) -> int:
    """Delete an annotator's account; their annotations stay on the server (author unknown from then on)."""
    found = [uid for uid, e in server.users(refresh=True).items() if e.lower() == email.lower()]
    if not found:
        raise ReviewError(f"{email} has no account on {server.url}")
    if server.whoami()["id"] == found[0]:
        raise ReviewError(f"{email} is the token's own account; it cannot be removed from here")
    server.delete_user(found[0])
    return found[0]


def sync_tabs(server: ReviewServer, project_id: int, team: Team, known: dict[str, int]) -> dict[str, int]:
    """One Data Manager tab per annotator (title = e-mail, filter ``data.annotator``); tabs of annotators
    who left the team are deleted. ``known`` and the result map e-mail → tab id."""
    tabs = server.tabs(project_id)
    out: dict[str, int] = {}
    for email in team.annotators:
        if email in tabs:
            out[email] = tabs[email]
        else:
            out[email] = server.create_tab(project_id, email, "annotator", email)
    for email, tab in known.items():
        if email not in out and tabs.get(email) == tab:
            server.delete_tab(tab)
    return out
