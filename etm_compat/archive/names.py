"""Which member names an ``.etm`` archive may hold, the role each name implies, and the names
and roles of format version 2 (programs, processors, weight roles).

Shared by the writer (refuse to pack a bad name) and the reader (refuse to open one).

>>> role_of("weights/model.ptd"), check_member_name("../etc/passwd")
('weights', "path traversal ('..')")
>>> role_of("programs/preprocessor.pte"), program_name("programs/preprocessor.pte")
('program', 'preprocessor')
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

from etm_compat.constants import (
    ETM_PROGRAM_ROLES,
    ETM_SUFFIX,
    ETM_WEIGHTS_ROLES,
    MAIN_PROGRAM_NAME,
    MEMBER_METADATA,
    MEMBER_PROCESSORS_DIR,
    MEMBER_PROGRAM,
    MEMBER_PROGRAMS_DIR,
    MEMBER_SPECIAL_TOKENS_MAP,
    MEMBER_TOKENIZER_CONFIG,
    MEMBER_TOKENIZER_NAMES,
    MEMBER_WEIGHTS_DIR,
    ZIP_LOCAL_MAGIC,
)
from etm_compat.errors import UnreadableError
from etm_compat.fileio import open_regular

__all__ = [
    "ROLES",
    "Modality",
    "Role",
    "WeightsRole",
    "check_member_name",
    "check_program_name",
    "check_program_role",
    "check_weights_role",
    "is_archive",
    "member_rank",
    "member_version",
    "processor_member",
    "processor_member_names",
    "processor_name",
    "program_member",
    "program_member_names",
    "program_name",
    "role_of",
    "weights_member_names",
]

Role = Literal["program", "tokenizer", "tokenizer_config", "processor_config", "weights"]
ROLES: tuple[Role, ...] = ("program", "tokenizer", "tokenizer_config", "processor_config", "weights")
WeightsRole = Literal["weights", "foundation", "adapter", "backend_blob"]
Modality = Literal["text", "vision", "audio"]

_WEIGHTS_NAME = re.compile(r"weights/[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.ptd\Z")
#: A program or processor name: no dots (no ``..``, no second suffix), no folder part.
_PART = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_NAME = re.compile(_PART + r"\Z")
_PROGRAM_MEMBER = re.compile(re.escape(MEMBER_PROGRAMS_DIR) + f"({_PART})" + r"\.pte\Z")
_PROCESSOR_MEMBER = re.compile(re.escape(MEMBER_PROCESSORS_DIR) + f"({_PART})" + r"\.json\Z")
_NAMED_ROLE = re.compile(r"x-[a-z0-9][a-z0-9_-]{0,62}\Z")
#: Processor names whose extracted file (``<name>.json``) would land on another member's file.
_RESERVED_PROCESSORS: Final = frozenset(
    Path(n).stem for n in (MEMBER_METADATA, *MEMBER_TOKENIZER_NAMES, MEMBER_TOKENIZER_CONFIG,
                           MEMBER_SPECIAL_TOKENS_MAP) if n.endswith(".json")
)  # fmt: skip
#: Archive order: the main program, other programs, tokenizer, its configs, processors, weights.
_RANKS: Final = {"program": 0, "tokenizer": 2, "tokenizer_config": 3, "processor_config": 5,
                 "weights": 6}  # fmt: skip


def program_name(member: str) -> str | None:
    """The program name of a program member (``model.pte`` is ``model``), else None."""
    if member == MEMBER_PROGRAM:
        return MAIN_PROGRAM_NAME
    found = _PROGRAM_MEMBER.match(member)
    if found is None or found.group(1) == MAIN_PROGRAM_NAME:
        return None
    return found.group(1)


def program_member(name: str) -> str:
    """The member holding program ``name``: ``model.pte`` for ``model``, else ``programs/<name>.pte``.

    >>> program_member("model"), program_member("preprocessor")
    ('model.pte', 'programs/preprocessor.pte')
    """
    return MEMBER_PROGRAM if name == MAIN_PROGRAM_NAME else f"{MEMBER_PROGRAMS_DIR}{name}.pte"


def processor_name(member: str) -> str | None:
    """The processor name of a ``processors/<name>.json`` member, else None."""
    found = _PROCESSOR_MEMBER.match(member)
    if found is None or found.group(1) in _RESERVED_PROCESSORS:
        return None
    return found.group(1)


def processor_member(name: str) -> str:
    """The member holding processor config ``name`` (``processors/<name>.json``)."""
    return f"{MEMBER_PROCESSORS_DIR}{name}.json"


def role_of(name: str) -> Role | None:
    """The role a member name implies, or None for a name an archive may not hold."""
    if program_name(name) is not None:
        return "program"
    if name in MEMBER_TOKENIZER_NAMES:
        return "tokenizer"
    if name in (MEMBER_TOKENIZER_CONFIG, MEMBER_SPECIAL_TOKENS_MAP):
        return "tokenizer_config"
    if processor_name(name) is not None:
        return "processor_config"
    if _WEIGHTS_NAME.match(name) and ".." not in name:
        return "weights"
    return None


def member_version(name: str) -> int:
    """The first format version whose archives may hold this (allowed) member name.

    >>> member_version("weights/model.ptd"), member_version("processors/preprocessor_config.json")
    (1, 2)
    """
    if name.startswith((MEMBER_PROGRAMS_DIR, MEMBER_PROCESSORS_DIR)):
        return 2
    return 2 if name == MEMBER_SPECIAL_TOKENS_MAP else 1


def member_rank(name: str) -> tuple[int, str]:
    """The sort key of the archive order (version-1 archives keep their version-1 order)."""
    role = role_of(name)
    rank = _RANKS[role] if role is not None else 9
    if role == "program" and name != MEMBER_PROGRAM:
        rank = 1
    elif name == MEMBER_SPECIAL_TOKENS_MAP:
        rank = 4
    return rank, name


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
        f"{MEMBER_PROGRAMS_DIR}<name>.pte, {', '.join(MEMBER_TOKENIZER_NAMES)}, "
        f"{MEMBER_TOKENIZER_CONFIG}, {MEMBER_SPECIAL_TOKENS_MAP}, "
        f"{MEMBER_PROCESSORS_DIR}<name>.json, {MEMBER_WEIGHTS_DIR}<name>.ptd, where a program's "
        f"or processor's <name> is letters, digits, '_' and '-', and not '{MAIN_PROGRAM_NAME}')"
    )


def check_program_name(name: str) -> str | None:
    """Why ``name`` cannot name a program, or None if it can."""
    if _NAME.match(name):
        return None
    return "not a program name (letters, digits, '_' and '-', starting with a letter or digit)"


def check_program_role(role: str) -> str | None:
    """Why ``role`` is not a program role, or None if it is one.

    >>> check_program_role("preprocessor") is None, check_program_role("x-vad") is None
    (True, True)
    """
    if role in ETM_PROGRAM_ROLES or _NAMED_ROLE.match(role):
        return None
    return f"not a program role (one of {list(ETM_PROGRAM_ROLES)}, or a named role 'x-<name>')"


def check_weights_role(role: str) -> str | None:
    """Why ``role`` is not a weights role, or None if it is one."""
    if role in ETM_WEIGHTS_ROLES:
        return None
    return f"not a weights role (one of {list(ETM_WEIGHTS_ROLES)})"


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


def _safe_names(paths: Sequence[Path], default: str, reserved: frozenset[str]) -> list[str]:
    """Each path's stem as a program/processor name: ASCII letters, digits, '_' and '-', starting
    with a letter or digit, at most 60 characters; ``_2``, ``_3``... after a taken or reserved one."""
    names: list[str] = []
    for path in paths:
        safe = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in path.stem)
        stem = safe.lstrip("_-")[:60] or default
        name, n = stem, 1
        while name in names or name in reserved:
            n += 1
            name = f"{stem}_{n}"
        names.append(name)
    return names


def program_member_names(paths: Sequence[Path]) -> list[str]:
    """Member names for programs other than the main one: ``programs/<stem>.pte``, made safe and
    unique (never ``programs/model.pte``: ``model`` is the main program's name).

    >>> program_member_names([Path("a/preprocessor.pte"), Path("b/model.pte"), Path("c d.pte")])
    ['programs/preprocessor.pte', 'programs/model_2.pte', 'programs/c_d.pte']
    """
    names = _safe_names(paths, "program", frozenset({MAIN_PROGRAM_NAME}))
    return [program_member(name) for name in names]


def processor_member_names(paths: Sequence[Path]) -> list[str]:
    """Member names for processor configs: ``processors/<stem>.json``, made safe and unique (never
    a name whose extracted file would replace the tokenizer's or the metadata's).

    >>> processor_member_names([Path("v/preprocessor_config.json"), Path("tokenizer_config.json")])
    ['processors/preprocessor_config.json', 'processors/tokenizer_config_2.json']
    """
    return [processor_member(n) for n in _safe_names(paths, "processor", _RESERVED_PROCESSORS)]


def is_archive(path: str | os.PathLike[str]) -> bool:
    """Whether a path is meant as an archive: the ``.etm`` suffix, or a zip local header first.

    The one rule every command uses to choose between the archive reader and the legacy path. A
    ``.etm`` that is not a valid zip still counts, so that the archive reader says what is wrong.
    Only regular files are opened (a FIFO would block).

    >>> is_archive("fixtures/programs/xnnpack.pte")
    False
    """
    p = Path(path)
    if p.suffix == ETM_SUFFIX:
        return True
    try:
        with open_regular(p) as fh:
            return fh.read(len(ZIP_LOCAL_MAGIC)) == ZIP_LOCAL_MAGIC
    except (OSError, UnreadableError):
        return False
