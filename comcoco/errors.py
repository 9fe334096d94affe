"""The one base of every expected failure, so faces catch exactly what they can explain.

An expected failure is one a user can act on from its message alone: a refused or malformed input,
an unusable option, a work directory or release in the wrong state, an unreachable server. The CLI
catches ``ComcocoError`` (and only it, besides the operating system's own ``OSError``) and prints
``error: <message>``; anything else is a bug and keeps its traceback. Each wing derives its own kinds
from this base; several also derive from ``ValueError`` where callers already relied on that.
"""

from __future__ import annotations


class ComcocoError(Exception):
    """An expected, explainable failure; the message names the file, record or option at fault."""
