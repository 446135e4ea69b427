"""Which member names an ``.etm`` archive may hold, and the role each name implies.

Shared by the writer (refuse to pack a bad name) and the reader (refuse to open one).

>>> role_of("weights/model.ptd"), check_member_name("../etc/passwd")
('weights', "path traversal ('..')")
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from etm_compat.constants import (
    MEMBER_METADATA,
    MEMBER_PROGRAM,
    MEMBER_TOKENIZER_CONFIG,
    MEMBER_TOKENIZER_NAMES,
    MEMBER_WEIGHTS_DIR,
)

__all__ = ["ROLES", "Role", "check_member_name", "role_of", "weights_member_names"]

Role = Literal["program", "tokenizer", "tokenizer_config", "weights"]
ROLES: tuple[Role, ...] = ("program", "tokenizer", "tokenizer_config", "weights")

_WEIGHTS_NAME = re.compile(r"weights/[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.ptd\Z")


def role_of(name: str) -> Role | None:
    """The role a member name implies, or None for a name an archive may not hold."""
    if name == MEMBER_PROGRAM:
        return "program"
    if name in MEMBER_TOKENIZER_NAMES:
        return "tokenizer"
    if name == MEMBER_TOKENIZER_CONFIG:
        return "tokenizer_config"
    if _WEIGHTS_NAME.match(name) and ".." not in name:
        return "weights"
    return None


def check_member_name(name: str) -> str | None:
    """Why ``name`` may not appear in an archive, or None if it may."""
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if "\\" in name:
        return "backslash in name"
    if ".." in name.split("/"):
        return "path traversal ('..')"
    if name == MEMBER_METADATA or role_of(name) is not None:
        return None
    return (
        f"not an allowed member name (allowed: {MEMBER_METADATA}, {MEMBER_PROGRAM}, "
        f"{', '.join(MEMBER_TOKENIZER_NAMES)}, {MEMBER_TOKENIZER_CONFIG}, "
        f"{MEMBER_WEIGHTS_DIR}<name>.ptd)"
    )


def weights_member_names(paths: Sequence[Path]) -> list[str]:
    """The archive member names for these ``.ptd`` files, in order: ``weights/<stem>.ptd`` with the
    stem reduced to safe characters, and ``_2``, ``_3``... where two stems collide. ``pack`` names
    members with it and the loader predicts them with it, so the two always agree.

    >>> weights_member_names([Path("a/w.ptd"), Path("b/w.ptd"), Path("x y.ptd")])
    ['weights/w.ptd', 'weights/w_2.ptd', 'weights/x_y.ptd']
    """
    names: list[str] = []
    for path in paths:
        stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in path.stem) or "weights"
        name, n = f"{MEMBER_WEIGHTS_DIR}{stem}.ptd", 1
        while name in names:
            n += 1
            name = f"{MEMBER_WEIGHTS_DIR}{stem}_{n}.ptd"
        names.append(name)
    return names
