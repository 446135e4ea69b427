"""What the files of a deployment folder are: the tokenizer, configs, stubs, and files never packed.

Shared by the adapters (which read whole folders) and by :mod:`etm_compat.legacy.resolve` (which
takes a tokenizer the user names, possibly as an HF folder or a hub-cache snapshot). Every
decision is by content or fixed name, never by guessing from other names.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from etm_compat.constants import ETM_SUFFIX, TOKENIZER_SUFFIXES
from etm_compat.errors import InputError, UnreadableError
from etm_compat.fileio import read_capped
from etm_compat.formats.tokenizer.detect import looks_like_tokenizer
from etm_compat.legacy.deployment import ConfigRole

#: Fixed file names of configuration files, by role.
CONFIG_NAMES: Final[Mapping[str, ConfigRole]] = {
    "tokenizer_config.json": "tokenizer_config",
    "generation_config.json": "generation_config",
    "config.json": "config",
    "chat_template.jinja": "chat_template",
    "chat_template.json": "chat_template",
    "params.json": "params",
    "special_tokens_map.json": "special_tokens_map",
    "preprocessor_config.json": "processor_config",
}
#: The config roles that belong to a tokenizer (they travel with it when it is shared or named).
TOKENIZER_CONFIG_ROLES: Final[tuple[ConfigRole, ...]] = ("tokenizer_config", "special_tokens_map", "chat_template")
#: Tokenizer file names in the order the ExecuTorch runner's loader prefers them.
TOKENIZER_NAMES: Final = ("tekken.json", "tokenizer.json", "tokenizer.model", "tokenizer.bin")
#: Files never taken for a tokenizer even if they sniff like one.
NOT_TOKENIZERS: Final = frozenset(CONFIG_NAMES) | {"metadata.json", "vocab.json", "merges.txt", "added_tokens.json"}
#: A subfolder that holds the tokenizer (whisper-style ``--tokenizer_path ./tokenizer``).
TOKENIZER_FOLDER: Final = "tokenizer"
#: Suffixes of training checkpoints and notebooks published beside programs: never packed.
CHECKPOINT_SUFFIXES: Final = (".safetensors", ".pth", ".pt", ".ckpt", ".gguf", ".bin")
NOTEBOOK_SUFFIXES: Final = (".ipynb",)
#: A config.json this small holding only ``model_type`` is a placeholder, not a model config.
STUB_CONFIG_MAX_BYTES: Final = 256


@dataclass(frozen=True)
class FolderStamp:
    """What a folder held when it was listed: a digest of every entry's name and kind, and of
    each file's size, mtime and inode (``digest``); the entry ``names``; the newest file mtime.

    Two stamps of a folder are equal iff no entry appeared, went or changed kind, and no file
    changed size, mtime or inode since: what a re-run needs to reuse what was read from it.
    The upgrade's own outputs (``*.etm``, their lock and temporary files, the packer's
    ``.etm-pack-*`` folders, the state folder) are not part of it; no adapter reads them.
    """

    digest: str
    names: frozenset[str]
    newest_mtime_ns: int


#: The hidden folder where ``upgrade`` keeps what it remembers between runs (etm_compat.bulk.state).
UPGRADE_STATE_DIR: Final = ".etm-upgrade"


def _own_output(name: str) -> bool:
    return name.endswith(ETM_SUFFIX) or name == UPGRADE_STATE_DIR or (
        name.startswith(".") and name.endswith((ETM_SUFFIX + ".lock", ".tmp"))
    ) or name.startswith(".etm-pack-")


def stamp_entries(entries: Iterable[os.DirEntry[str]]) -> FolderStamp:
    """The :class:`FolderStamp` of a folder from its ``os.scandir`` entries (one stat per file)."""
    rows: list[tuple[str, str, int, int, int]] = []
    newest = 0
    for entry in entries:
        name = entry.name
        if _own_output(name):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                rows.append((name, "d", 0, 0, 0))
                continue
            st = entry.stat()
        except OSError:  # a dangling symlink, or the entry just went
            rows.append((name, "x", 0, 0, 0))
            continue
        kind = "f" if entry.is_file() else "o"
        rows.append((name, kind, st.st_size, st.st_mtime_ns, st.st_ino))
        newest = max(newest, st.st_mtime_ns)
    rows.sort()
    digest = hashlib.blake2b(repr(rows).encode("utf-8"), digest_size=16).hexdigest()
    return FolderStamp(digest, frozenset(r[0] for r in rows), newest)


def folder_stamp(folder: Path) -> FolderStamp:
    """The :class:`FolderStamp` of ``folder`` now; raises OSError when it cannot be listed."""
    with os.scandir(folder) as it:
        return stamp_entries(list(it))


@dataclass(frozen=True)
class _Listing:
    stamp: FolderStamp
    files: tuple[Path, ...]


#: Inside :func:`recording_listings`: every folder :func:`list_files` listed, stamp and files.
_LISTED: ContextVar[dict[Path, _Listing] | None] = ContextVar("etm_listed", default=None)


@contextmanager
def recording_listings() -> Iterator[Mapping[Path, FolderStamp]]:
    """Record every folder :func:`list_files` lists in this context, with its stamp taken from
    that listing, before any file in it is read (adapters read only files they found through
    :func:`list_files`, so a folder's deployments depend on those folders and nothing else).
    Each folder is listed once in the context. Yields ``{folder: stamp}``, filled when the
    context ends.
    """
    listed: dict[Path, _Listing] = {}
    stamps: dict[Path, FolderStamp] = {}
    token = _LISTED.set(listed)
    try:
        yield stamps
    finally:
        _LISTED.reset(token)
        stamps.update((folder, listing.stamp) for folder, listing in listed.items())


def list_files(folder: Path) -> list[Path]:
    """Regular files directly in ``folder``, sorted by name (symlinks to files count)."""
    listed = _LISTED.get()
    if listed is not None and folder in listed:
        return list(listed[folder].files)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"cannot list folder: {exc.strerror}", path=folder) from exc
    files = []
    for entry in entries:
        try:
            if entry.is_file():
                files.append(Path(entry.path))
        except OSError:
            continue
    if listed is not None:
        listed[folder] = _Listing(stamp_entries(entries), tuple(files))
    return files


def tokenizer_candidates(files: Sequence[Path]) -> list[Path]:
    """Every file of a folder that sniffs as a tokenizer: runner-known names first, in the
    runner's order, then other tokenizer-like names (by content, not by name)."""
    by_name = {p.name: p for p in files}
    named = [by_name[n] for n in TOKENIZER_NAMES if n in by_name and looks_like_tokenizer(by_name[n])]
    others = [
        p
        for p in files
        if p.name not in TOKENIZER_NAMES
        and p.suffix in TOKENIZER_SUFFIXES
        and p.name not in NOT_TOKENIZERS
        and looks_like_tokenizer(p)
    ]
    return named + others


def is_stub_config(path: Path) -> bool:
    """A placeholder ``config.json`` such as ``{"model_type": "llama"}`` (published ExecuTorch
    repos ship one): it names no architecture, size or token ids."""
    try:
        if path.stat().st_size > STUB_CONFIG_MAX_BYTES:
            return False
        value = json.loads(read_capped(path, STUB_CONFIG_MAX_BYTES, what="config"))
    except (OSError, ValueError, InputError):
        return False
    return isinstance(value, dict) and set(value) <= {"model_type"}


def find_configs(files: Sequence[Path]) -> tuple[dict[ConfigRole, Path], list[Path]]:
    """Config files by role, and the stub configs left out of them."""
    configs: dict[ConfigRole, Path] = {}
    stubs: list[Path] = []
    for path in files:
        role = CONFIG_NAMES.get(path.name)
        if role is None or role in configs:
            continue
        if role == "config" and is_stub_config(path):
            stubs.append(path)
            continue
        configs[role] = path
    return configs, stubs


def left_out(files: Sequence[Path], used: set[Path]) -> list[tuple[Path, str]]:
    """Files published beside programs that must never be packed: checkpoints and notebooks."""
    out: list[tuple[Path, str]] = []
    for path in files:
        if path in used:
            continue
        if path.suffix in NOTEBOOK_SUFFIXES:
            out.append((path, "a notebook, not part of the deployment: not packed"))
        elif path.suffix in CHECKPOINT_SUFFIXES and not looks_like_tokenizer(path):
            out.append((path, "a training checkpoint, not an ExecuTorch file: not packed"))
    return out


def tokenizer_in(folder: Path) -> tuple[Path | None, dict[ConfigRole, Path]]:
    """The tokenizer a folder holds (itself or its ``tokenizer/`` subfolder), and the tokenizer
    config files beside it."""
    for where in (folder, folder / TOKENIZER_FOLDER):
        if not where.is_dir():
            continue
        files = list_files(where)
        found = tokenizer_candidates(files)
        if found:
            configs, _ = find_configs(files)
            return found[0], {r: configs[r] for r in TOKENIZER_CONFIG_ROLES if r in configs}
    return None, {}


def hub_snapshot(folder: Path) -> Path:
    """The snapshot folder a Hugging Face hub-cache repo folder points at (``refs/main``), or
    ``folder`` itself when it is not one (``models--org--name``)."""
    ref = folder / "refs" / "main"
    if not (folder / "snapshots").is_dir() or not ref.is_file():
        return folder
    try:
        commit = read_capped(ref, 256, what="hub cache ref").decode("ascii").strip()
    except (UnicodeDecodeError, InputError) as exc:
        raise InputError("unreadable refs/main in a hub cache folder", path=ref) from exc
    snapshot = folder / "snapshots" / commit
    if not commit.isalnum() or not snapshot.is_dir():
        raise UnreadableError(f"refs/main names snapshot {commit!r}, which is not there", path=folder)
    return snapshot


def named_tokenizer(path: Path) -> tuple[Path, dict[ConfigRole, Path]]:
    """The tokenizer a user names: a file, an HF tokenizer folder, or a hub-cache repo/snapshot."""
    if not path.exists():
        raise UnreadableError("no such tokenizer file or folder", path=path)
    if not path.is_dir():
        return path, {}
    tokenizer, configs = tokenizer_in(hub_snapshot(path))
    if tokenizer is None:
        raise InputError(
            "no tokenizer file in this folder",
            path=path,
            hint=f"name the file itself, or a folder holding one of {', '.join(TOKENIZER_NAMES)}",
        )
    return tokenizer, configs


__all__ = [
    "CONFIG_NAMES",
    "NOT_TOKENIZERS",
    "TOKENIZER_CONFIG_ROLES",
    "TOKENIZER_NAMES",
    "UPGRADE_STATE_DIR",
    "FolderStamp",
    "find_configs",
    "folder_stamp",
    "hub_snapshot",
    "is_stub_config",
    "left_out",
    "list_files",
    "named_tokenizer",
    "recording_listings",
    "stamp_entries",
    "tokenizer_candidates",
    "tokenizer_in",
]
