"""Archives whose metadata.json lies about their members are refused when they are opened.

Each hostile archive starts as a good one made by the real writer (``etm_compat.packing.pack`` on
``fixtures/legacy/et_example``); its metadata.json is then rewritten (and members added where the
lie needs them) and the zip rebuilt with valid CRCs, so only the metadata's cross-references are
wrong. ``open_archive``, ``verify``, ``diagnose`` and ``etm_compat.load`` each give one
:class:`MetadataError` naming the problem.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES
from test_archive_hostile import raw_zip

import etm_compat
from etm_compat.adapters import default_adapters
from etm_compat.archive import open_archive
from etm_compat.archive.metadata import serialize_metadata
from etm_compat.diagnosis import diagnose
from etm_compat.errors import MetadataError
from etm_compat.packing import pack
from etm_compat.verification import verify

Meta = dict[str, Any]
Members = dict[str, bytes]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = FIXTURES / "legacy" / "et_example"
    if not source.is_dir():
        pytest.skip("fixtures missing (run ./dev.sh fixtures)")
    dest = tmp_path_factory.mktemp("good") / "good.etm"
    pack(source, dest, default_adapters())
    return dest


def read_back(path: Path) -> tuple[Meta, Members]:
    """The metadata and every other member's bytes of an archive, in archive order."""
    with open_archive(path) as etm:
        members = {}
        for name in etm.members:
            if name != "metadata.json":
                view = etm.member_view(name)
                members[name] = bytes(view)
                view.release()
        return copy.deepcopy(etm.metadata), members


def add_member(meta: Meta, members: Members, name: str, data: bytes, role: str) -> None:
    """Add a member to the zip and to ``$.members`` with its true size and sha256."""
    members[name] = data
    meta["members"].append(
        {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "role": role}
    )


def rewrite(good: Path, dest: Path, lie: Callable[[Meta, Members], None]) -> Path:
    """A copy of ``good`` whose metadata (and members) ``lie`` changed; a valid zip otherwise."""
    meta, members = read_back(good)
    lie(meta, members)
    entries = [{"name": "metadata.json", "data": serialize_metadata(meta)}]
    entries += [{"name": n, "data": d} for n, d in members.items()]
    dest.write_bytes(raw_zip(entries))
    return dest


def _tokenizer(member: str) -> Callable[[Meta, Members], None]:
    def lie(meta: Meta, _: Members) -> None:
        meta["tokenizer"]["member"] = member

    return lie


def _second_tokenizer(meta: Meta, members: Members) -> None:
    add_member(meta, members, "tokenizer.bin", b"\x00" * 64, "tokenizer")


def _config_without_hf(meta: Meta, members: Members) -> None:
    add_member(meta, members, "tokenizer_config.json", b'{"bos_token": "<s>"}', "tokenizer_config")


def _ghost_weights(meta: Meta, _: Members) -> None:
    meta["weights"].append({"member": "weights/ghost.ptd", "keys": ["linear.weight"]})


def _program_as_weights(meta: Meta, _: Members) -> None:
    meta["weights"].append({"member": "model.pte", "keys": []})


def _bad_sha(meta: Meta, _: Members) -> None:
    meta["members"][0]["sha256"] = "Z" * 64


def _bad_snapshot(meta: Meta, _: Members) -> None:
    meta["program"]["methods"] = "forward"
    meta["program"]["size"] = -1


def _bad_provenance(meta: Meta, _: Members) -> None:
    meta["provenance"]["sources"] = [{"path": "", "size": -5, "sha256": "x", "mtime_ns": 0}]


def _format_mismatch(meta: Meta, _: Members) -> None:
    meta["tokenizer"]["format"] = "hf_json"  # the member stays tokenizer.model


#: case -> (the lie, what the error must say)
CASES: dict[str, tuple[Callable[[Meta, Members], None], list[str]]] = {
    "tokenizer_member_missing": (
        _tokenizer("tokenizer.json"), ["$.tokenizer.member: 'tokenizer.json' is not a member"]),
    "tokenizer_member_is_the_program": (
        _tokenizer("model.pte"), ["$.tokenizer.member: 'model.pte' is not a tokenizer member (it is the program)"]),
    "two_tokenizers": (
        _second_tokenizer, ["more than one tokenizer member ('tokenizer.bin', 'tokenizer.model')"]),
    "tokenizer_config_without_hf_tokenizer": (
        _config_without_hf, ["'tokenizer_config.json' without 'tokenizer.json'"]),
    "weights_entry_names_no_member": (
        _ghost_weights, ["$.weights[0].member: 'weights/ghost.ptd' is not a weights member"]),
    "weights_entry_names_the_program": (
        _program_as_weights, ["$.weights[0].member: 'model.pte' is not a weights member"]),
    "member_sha256_malformed": (
        _bad_sha, ["$.members[0].sha256: expected 64 lowercase hex digits"]),
    "program_snapshot_misshapen": (
        _bad_snapshot, ["$.program.methods: expected an array", "$.program.size: expected uint"]),
    "provenance_entry_misshapen": (
        _bad_provenance, ["$.provenance.sources[0].path: must be a non-empty path",
                          "$.provenance.sources[0].size: expected uint",
                          "$.provenance.sources[0].sha256: expected 64 lowercase hex digits"]),
    "tokenizer_format_disagrees_with_member": (
        _format_mismatch, ["'tokenizer.model' does not hold a 'hf_json' tokenizer"]),
}  # fmt: skip


def test_the_unchanged_rewrite_opens(good: Path, tmp_path: Path) -> None:
    """The rebuild itself is sound: with no lie the archive opens, verifies and loads."""
    same = rewrite(good, tmp_path / "same.etm", lambda meta, members: None)
    with open_archive(same) as etm:
        assert etm.metadata["tokenizer"]["member"] == "tokenizer.model"
        assert etm.verify() == []
    assert verify(same).ok


@pytest.mark.parametrize("case", sorted(CASES))
def test_lying_metadata_is_refused_at_open(good: Path, tmp_path: Path, case: str) -> None:
    lie, needles = CASES[case]
    hostile = rewrite(good, tmp_path / f"{case}.etm", lie)
    with pytest.raises(MetadataError) as info:
        open_archive(hostile)
    message = str(info.value)
    assert str(hostile) in message and info.value.hint
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_entry_point_gives_one_clear_error(good: Path, tmp_path: Path, case: str) -> None:
    lie, needles = CASES[case]
    hostile = rewrite(good, tmp_path / f"{case}.etm", lie)
    entry_points: list[Callable[[], object]] = [
        lambda: verify(hostile),
        lambda: diagnose(hostile, default_adapters()),
        lambda: etm_compat.load(hostile),
    ]
    for call in entry_points:
        with pytest.raises(MetadataError) as info:
            call()
        assert needles[0] in str(info.value)


def test_every_lie_is_reported_at_once(good: Path, tmp_path: Path) -> None:
    """Several lies in one archive: one MetadataError that lists every one of them."""

    def lies(meta: Meta, members: Members) -> None:
        for lie in (_config_without_hf, _ghost_weights, _program_as_weights, _bad_sha, _bad_snapshot):
            lie(meta, members)
        meta["tokenizer"]["member"] = "model.pte"

    hostile = rewrite(good, tmp_path / "all.etm", lies)
    with pytest.raises(MetadataError) as info:
        open_archive(hostile)
    message = str(info.value)
    assert message.count("metadata.json is invalid") == 1
    for needle in (
        "$.tokenizer.member: 'model.pte' is not a tokenizer member",
        "'tokenizer_config.json' without 'tokenizer.json'",
        "$.weights[0].member: 'weights/ghost.ptd' is not a weights member",
        "$.weights[1].member: 'model.pte' is not a weights member",
        "$.members[0].sha256: expected 64 lowercase hex digits",
        "$.program.methods: expected an array",
    ):
        assert needle in message, needle
