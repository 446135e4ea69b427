"""The hostile input corpus: every case built here by code, each checked for the same contract.

A case builds its input under ``tmp_path/"in"`` and then runs one reader or one CLI command on
it. Every case must end in a clear error (the named EtmError subclass, or CLI exit 3 with one
line on stderr, no traceback and no raw ESC), without hanging (a 60 s guard, not a speed
bound: the machine is shared), without growing the process's peak
memory by more than 300 MiB, and without writing anything outside ``tmp_path/"out"``: the
current directory is an empty folder that must stay empty, and the parent of ``tmp_path`` must
hold the same names afterwards. Cases that only mirror other test files are left to those files.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import flatbuffers
import pytest
from conftest import FIXTURES

from etm_compat.archive.metadata import new_metadata, parse_metadata, serialize_metadata
from etm_compat.cli.main import main
from etm_compat.errors import (
    EtmError,
    MetadataError,
    PtdFormatError,
    PteFormatError,
    TemplateError,
    TokenizerFormatError,
    UnreadableError,
)
from etm_compat.formats.ptd import read_ptd, read_ptd_bytes
from etm_compat.formats.pte import read_pte, read_pte_bytes
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS, render_chat

#: A hang guard only: a case still running after this long never ends. Speed is not timed.
HANG_SECONDS = 60.0
MAX_RSS_GROWTH_KIB = 300 * 1024
ESC = "\x1b"


@dataclass(frozen=True)
class Case:
    """``build(in_dir, out_dir)`` returns the action; ``expect`` an EtmError class, ``"cli"``, or
    ``"ok"``: the action succeeds and ``check`` holds for what it returned (an odd input that is
    valid must be read right, not merely not crash)."""

    build: Callable[[Path, Path], Callable[[], Any]]
    expect: type[EtmError] | str
    match: str = ""
    check: Callable[[Any], bool] | None = None


CASES: dict[str, Case] = {}


def case(
    name: str, expect: type[EtmError] | str, match: str = "", check: Callable[[Any], bool] | None = None
) -> Callable[..., Any]:
    assert (expect == "ok") == (check is not None), "an ok case says what it must return"

    def register(build: Callable[[Path, Path], Callable[[], Any]]) -> Callable[..., Any]:
        CASES[name] = Case(build, expect, match, check)
        return build

    return register


def write(folder: Path, name: str, data: bytes | str) -> Path:
    path = folder / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def sparse(folder: Path, name: str, head: bytes, size: int) -> Path:
    path = folder / name
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


# --- malicious FlatBuffers --------------------------------------------------------------------


def fb_header(root: int, ident: bytes = b"ET12") -> bytes:
    return struct.pack("<I", root) + ident


def constant_program(out_spec: str, plans: int = 1) -> bytes:
    """A Program with one constant method ``get`` returning Int 7, with ``encoded_out_str``."""
    b = flatbuffers.Builder(1024)
    spec = b.CreateString(out_spec)
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(1, spec, 0)
    meta = b.EndObject()
    b.StartObject(1)
    b.PrependInt64Slot(0, 7, 0)
    int_val = b.EndObject()
    b.StartObject(2)
    b.PrependUint8Slot(0, 2, 0)  # EValue type Int
    b.PrependUOffsetTRelativeSlot(1, int_val, 0)
    evalue = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(evalue)
    values = b.EndVector()
    b.StartVector(4, 1, 4)
    b.PrependInt32(0)
    outputs = b.EndVector()
    b.StartObject(3)
    chain = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(chain)
    chains = b.EndVector()
    name = b.CreateString("get")
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependUOffsetTRelativeSlot(1, meta, 0)
    b.PrependUOffsetTRelativeSlot(2, values, 0)
    b.PrependUOffsetTRelativeSlot(4, outputs, 0)
    b.PrependUOffsetTRelativeSlot(5, chains, 0)
    plan = b.EndObject()
    b.StartVector(4, plans, 4)
    for _ in range(plans):
        b.PrependUOffsetTRelative(plan)  # every entry the same table: an offset "loop"
    plan_vec = b.EndVector()
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(1, plan_vec, 0)
    b.Finish(b.EndObject(), file_identifier=b"ET12")
    return bytes(b.Output())


def test_constant_program_builder_is_a_good_fixture() -> None:
    """The hand-built program reads back: the cases below each break one thing of it."""
    info = read_pte_bytes(constant_program("$"))
    assert dict(info.constant_methods) == {"get": 7}


@case("fb_root_offset_past_end", PteFormatError, "past the end")
def _(i: Path, o: Path) -> Callable[[], Any]:
    return lambda: read_pte_bytes(fb_header(0xFFFFFFF0) + bytes(56))


@case("fb_vtable_is_the_table_itself", PteFormatError, "vtable")
def _(i: Path, o: Path) -> Callable[[], Any]:
    # soffset 0: the vtable starts at the table, so its length field is the soffset's low half.
    return lambda: read_pte_bytes(fb_header(8) + struct.pack("<i", 0) + bytes(52))


@case("fb_vtable_overlapping_its_table", PteFormatError, "overruns")
def _(i: Path, o: Path) -> Callable[[], Any]:
    # soffset -4: vtable = table + 4, inside the table; it puts execution_plan at +0xFFFF.
    body = struct.pack("<i", -4) + struct.pack("<HHHH", 8, 8, 0, 0xFFFF) + bytes(48)
    return lambda: read_pte_bytes(fb_header(8) + body)


@case("fb_vtable_before_the_buffer", PteFormatError, "vtable")
def _(i: Path, o: Path) -> Callable[[], Any]:
    return lambda: read_pte_bytes(fb_header(8) + struct.pack("<i", 0x7FFFFFFF) + bytes(52))


@case("fb_huge_vector_length", PteFormatError, "claims")
def _(i: Path, o: Path) -> Callable[[], Any]:
    data = bytearray(constant_program("$"))
    root = struct.unpack_from("<I", data, 0)[0]
    vt = root - struct.unpack_from("<i", data, root)[0]
    field = root + struct.unpack_from("<H", data, vt + 6)[0]
    vec = field + struct.unpack_from("<I", data, field)[0]
    struct.pack_into("<I", data, vec, 0xFFFFFFFF)
    return lambda: read_pte_bytes(bytes(data))


@case("fb_string_length_past_end", PteFormatError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    data = bytearray(constant_program("$"))
    pos = data.find(b"get\x00") - 4  # the plan name's length prefix
    struct.pack_into("<I", data, pos, 0xFFFFFFF0)
    return lambda: read_pte_bytes(bytes(data))


@case("fb_offset_loop_10k_plans_one_table", PteFormatError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    # 20k entries point at one plan: over MAX_PLANS, refused before 20k constant reads.
    return lambda: read_pte_bytes(constant_program("$", plans=20_000))


def _returns_7(info: Any) -> bool:
    """A spec too deep to rebuild falls back to the flat output: the constant is still read."""
    return dict(info.constant_methods) == {"get": 7}


@case("fb_deep_cpp_pytree_spec", "ok", check=_returns_7)
def _(i: Path, o: Path) -> Callable[[], Any]:
    spec = "L1(" * 100_000 + "$" + ")" * 100_000
    return lambda: read_pte_bytes(constant_program(spec))


@case("fb_deep_json_pytree_spec", "ok", check=_returns_7)
def _(i: Path, o: Path) -> Callable[[], Any]:
    node = '{"type": "builtins.list", "context": "null", "children_spec": ['
    spec = "[1, " + node * 10_000 + "]}" * 10_000 + "]"
    return lambda: read_pte_bytes(constant_program(spec))


@case("fb_3_mb_json_pytree_spec", PteFormatError, "encoded_out_str has")
def _(i: Path, o: Path) -> Callable[[], Any]:
    node = '{"type": "builtins.list", "context": "null", "children_spec": ['
    spec = "[1, " + node * 50_000 + "]}" * 50_000 + "]"
    return lambda: read_pte_bytes(constant_program(spec))


@case("pte_extended_header_program_size_2_63", PteFormatError, "program_size")
def _(i: Path, o: Path) -> Callable[[], Any]:
    data = bytearray((FIXTURES / "programs/constants_all.pte").read_bytes())
    struct.pack_into("<Q", data, 16, 1 << 63)
    path = write(i, "m.pte", bytes(data))
    return lambda: read_pte(path)


@case("pte_sparse_4gib_without_extended_header", PteFormatError, "more than a FlatBuffer")
def _(i: Path, o: Path) -> Callable[[], Any]:
    head = (FIXTURES / "programs/ext_weights.pte").read_bytes()  # no eh00 header
    path = sparse(i, "big.pte", head, 4 << 30)
    return lambda: read_pte(path)


def _ptd() -> bytearray:
    return bytearray((FIXTURES / "programs/ext_weights.ptd").read_bytes())


@case("ptd_flatbuffer_size_past_end", PtdFormatError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    data = _ptd()
    struct.pack_into("<Q", data, 16, 1 << 40)  # FH01: flatbuffer_size
    return lambda: read_ptd_bytes(bytes(data))


@case("ptd_segment_base_2_64", PtdFormatError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    data = _ptd()
    struct.pack_into("<Q", data, 24, (1 << 64) - 1)  # FH01: segment_base_offset
    return lambda: read_ptd_bytes(bytes(data))


@case("ptd_root_offset_past_end", PtdFormatError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    data = _ptd()
    struct.pack_into("<I", data, 0, 0xFFFFFFF0)
    return lambda: read_ptd_bytes(bytes(data))


# --- tokenizer files of absurd size or nesting ----------------------------------------------


@case("tok_sparse_300mib_json", TokenizerFormatError, "bytes")
def _(i: Path, o: Path) -> Callable[[], Any]:
    head = b'{"model": {"type": "BPE", "vocab": {"a": 0}}, "pad": "'
    path = sparse(i, "tokenizer.json", head, 300 << 20)
    return lambda: read_tokenizer(path, check_runner=False)


@case("tok_sparse_300mib_sentencepiece", TokenizerFormatError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    head = (FIXTURES / "tokenizers/sp.model").read_bytes()
    path = sparse(i, "sp.model", head, 300 << 20)
    return lambda: read_tokenizer(path, check_runner=False)


@case("tok_json_10k_deep", TokenizerFormatError, "nested")
def _(i: Path, o: Path) -> Callable[[], Any]:
    doc = b'{"model": {"type": "BPE", "vocab": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}"
    path = write(i, "tokenizer.json", doc)
    return lambda: read_tokenizer(path, check_runner=False)


@case("tok_tiktoken_10mb_line", TokenizerFormatError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    path = write(i, "tokenizer.model", b"QQ==" * (10 << 18) + b" 0\n")
    return lambda: read_tokenizer(path, check_runner=False)


def _one_more_token(info: Any) -> bool:
    good = read_tokenizer(FIXTURES / "tokenizers/tiktoken.model", check_runner=False)
    return bool(info.format == "tiktoken" and info.vocab_size == good.vocab_size + 1)


@case("tok_tiktoken_10mb_line_after_good_head", "ok", check=_one_more_token)  # odd, not invalid
def _(i: Path, o: Path) -> Callable[[], Any]:
    good = (FIXTURES / "tokenizers/tiktoken.model").read_bytes()
    data = good + b"QUFB" * (10 << 18) + b" 99999\n"
    path = write(i, "tokenizer.model", data)
    return lambda: read_tokenizer(path, check_runner=False)


@case("tok_sentencepiece_varint_2_60", TokenizerFormatError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    varint = bytes([0x80] * 8 + [0x10])  # 2**60
    data = b"\x0a" + varint + b"\x0a\x01a" * 50
    path = write(i, "sp.model", data)
    return lambda: read_tokenizer(path, check_runner=False)


@case("tok_sentencepiece_overlong_varint", TokenizerFormatError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    data = b"\x0a" + b"\xff" * 11 + b"\x01" + b"\x0a\x01a" * 50
    path = write(i, "sp.model", data)
    return lambda: read_tokenizer(path, check_runner=False)


@case("tok_llama2c_max_token_length_2_31", TokenizerFormatError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    data = bytearray((FIXTURES / "tokenizers/tokenizer.bin").read_bytes())
    struct.pack_into("<i", data, 12, 0x7FFFFFFF)
    path = write(i, "tokenizer.bin", bytes(data))
    return lambda: read_tokenizer(path, check_runner=False)


@case("tok_folder_named_like_a_file", UnreadableError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    (i / "tokenizer.model").mkdir()
    return lambda: read_tokenizer(i / "tokenizer.model", check_runner=False)


@case("tok_dangling_symlink", UnreadableError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    (i / "tokenizer.model").symlink_to(i / "nowhere")
    return lambda: read_tokenizer(i / "tokenizer.model", check_runner=False)


@case("ptd_symlink_loop", UnreadableError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    (i / "a.ptd").symlink_to(i / "b.ptd")
    (i / "b.ptd").symlink_to(i / "a.ptd")
    return lambda: read_ptd(i / "a.ptd")


# --- metadata.json ----------------------------------------------------------------------------


def _meta(**changes: Any) -> dict[str, Any]:
    meta = new_metadata(tool_version="0")
    meta.update(changes)
    return meta


@case("meta_10k_deep", MetadataError, "nests")
def _(i: Path, o: Path) -> Callable[[], Any]:
    raw = serialize_metadata(_meta())[:-1] + b', "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    return lambda: parse_metadata(raw, name="m")


@case("meta_5mib_string", MetadataError, "bytes")
def _(i: Path, o: Path) -> Callable[[], Any]:
    return lambda: parse_metadata(json.dumps(_meta(chat_template="x" * (5 << 20))).encode(), name="m")


@case("meta_100k_digit_integer", MetadataError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    raw = serialize_metadata(_meta())[:-1] + b', "x": ' + b"9" * 100_000 + b"}"
    return lambda: parse_metadata(raw, name="m")


@case("meta_nan_and_infinity", MetadataError, "")
def _(i: Path, o: Path) -> Callable[[], Any]:
    raw = serialize_metadata(_meta())[:-1] + b', "x": [NaN, Infinity]}'
    return lambda: parse_metadata(raw, name="m")


@case("meta_deep_through_cli_verify", "cli")
def _(i: Path, o: Path) -> Callable[[], Any]:
    raw = serialize_metadata(_meta())[:-1] + b', "x": ' + b"{\"a\":" * 5000 + b"1" + b"}" * 5001
    path = write(i, "m.etm", stored_zip([("metadata.json", raw), ("model.pte", b"x")]))
    return lambda: ["verify", str(path)]


# --- Jinja server-side template injection and resource bombs ---------------------------------

TEMPLATES = {
    "ssti_mro_subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "ssti_cycler_globals_os": "{{ cycler.__init__.__globals__.os }}",
    "ssti_template_reference_context": "{{ self._TemplateReference__context }}",
    "ssti_lipsum_globals": "{{ lipsum.__globals__ }}",
    "ssti_namespace_init": "{{ namespace.__init__ }}",
    "ssti_joiner_globals": "{{ joiner.__init__.__globals__['os'].popen('id') }}",
    "ssti_format_attribute_walk": "{{ '{0.__class__.__init__.__globals__}'.format(cycler) }}",
    "ssti_format_filter_class": "{{ '%s' | format(''.__class__.__subclasses__) }}",
    "ssti_attr_filter": "{{ (cycler | attr('__init__')) }}",
    "ssti_request_config": "{{ config.__class__.__init__.__globals__ }}",
    "bomb_range_10_12": "{% for x in range(10**12) %}{% endfor %}",
    "bomb_repeat_10_9": "{{ 'a' * 10**9 }}",
    "bomb_recursive_macro": "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
    "bomb_mutual_macros": "{% macro a() %}{{ b() }}{% endmacro %}{% macro b() %}{{ a() }}{% endmacro %}{{ a() }}",
    "bomb_percent_width": "{{ '%1000000000s' | format('x') }}",
    "bomb_str_format_width": "{{ '{:>1000000000}'.format('x') }}",
    "bomb_doubling_namespace": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "bomb_nested_loops": "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}",
}


def _template_case(template: str) -> Case:
    return Case(
        lambda i, o: lambda: render_chat(template, STANDARD_CONVERSATIONS["system_multi_turn"]),
        TemplateError,
    )


CASES.update({f"jinja_{name}": _template_case(t) for name, t in TEMPLATES.items()})


# --- folders, unreadable files, names with control characters (through the CLI) ---------------


@case("cli_pack_symlink_loop_folder", "cli")
def _(i: Path, o: Path) -> Callable[[], Any]:
    (i / "dep").mkdir()
    (i / "dep" / "self").symlink_to(i / "dep")
    (i / "dep" / "a").symlink_to(i / "dep" / "b")
    (i / "dep" / "b").symlink_to(i / "dep" / "a")
    return lambda: ["pack", str(i / "dep"), "-o", str(o / "m.etm")]


@case("cli_inspect_unreadable_program", "cli")
def _(i: Path, o: Path) -> Callable[[], Any]:
    path = i / "model.pte"
    if os.geteuid() == 0:  # root reads chmod-000 files: use a FIFO, which must not block either
        os.mkfifo(path)
    else:
        path.write_bytes((FIXTURES / "programs/constants_all.pte").read_bytes())
        path.chmod(0)
    return lambda: ["inspect", str(path)]


@case("cli_inspect_dangling_symlink", "cli")
def _(i: Path, o: Path) -> Callable[[], Any]:
    (i / "model.pte").symlink_to(i / "gone.pte")
    return lambda: ["inspect", str(i / "model.pte")]


@case("cli_inspect_ansi_named_garbage", "cli")
def _(i: Path, o: Path) -> Callable[[], Any]:
    path = write(i, "\x1b[31mred\x1b[0m\x1b]0;pwned\x07.pte", b"\x00\x00\x00\x00XXXX" + bytes(64))
    return lambda: ["inspect", str(path)]


@case("cli_inspect_cr_lf_named_garbage", "cli")
def _(i: Path, o: Path) -> Callable[[], Any]:
    path = write(i, "a\rfake line\nsecond line.pte", b"not a program at all\n")
    return lambda: ["inspect", str(path)]


@case("cli_pack_ansi_named_tokenizer", "cli")
def _(i: Path, o: Path) -> Callable[[], Any]:
    path = write(i, "tok\x1b[2J\x1b[H.model", b"\x1b[31m garbage, not a tokenizer \x1b[0m")
    src = str(FIXTURES / "legacy" / "with_ptd")
    return lambda: ["pack", src, "--tokenizer", str(path), "-o", str(o / "m.etm")]


# --- zip bombs, overlapping members, path traversal (through `unpack`) -----------------------


def stored_zip(entries: list[tuple[str, bytes]], *, method: int = 0, shared: bool = False,
               declared: int | None = None) -> bytes:
    """Hand-made zip: stored entries, or one ``method``; ``shared`` points all at entry 0's data."""
    out, central = bytearray(), bytearray()
    first = 0
    for n, (name, data) in enumerate(entries):
        raw = name.encode("utf-8", "surrogateescape")
        crc, size = zlib.crc32(data), len(data) if declared is None else declared
        offset = first if shared and n else len(out)
        if not (shared and n):
            first = offset if n == 0 else first
            out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 33, crc, len(data),
                               size, len(raw), 0) + raw + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 33, crc,
                               len(data), size, len(raw), 0, 0, 0, 0, 0o100644 << 16, offset) + raw
    cd = len(out)
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries),
                                 len(central), cd, 0)
    return bytes(out)


def _meta_for(members: dict[str, bytes]) -> bytes:
    import hashlib

    meta = new_metadata(tool_version="0")
    meta["members"] = [
        {"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest(), "role": "program"}
        for n, d in members.items()
    ]
    return serialize_metadata(meta)


PTE = b"\x1c\x00\x00\x00ET12" + bytes(56)


def _unpack_case(extra: list[tuple[str, bytes]], **kw: Any) -> Callable[[Path, Path], Callable[[], Any]]:
    def build(i: Path, o: Path) -> Callable[[], Any]:
        entries = [("metadata.json", _meta_for({"model.pte": PTE})), ("model.pte", PTE), *extra]
        path = write(i, "m.etm", stored_zip(entries, **kw))
        return lambda: ["unpack", str(path), "-o", str(o / "x"), "--force"]

    return build


ZIP_CASES = {
    "zip_traversal_dotdot": [("../../evil.ptd", b"x")],
    "zip_traversal_in_weights": [("weights/../../../evil.ptd", b"x")],
    "zip_absolute_path": [("/tmp/evil.ptd", b"x")],
    "zip_backslash_traversal": [("..\\..\\evil.ptd", b"x")],
    "zip_ansi_member_name": [("weights/\x1b[31mred.ptd", b"x")],
    "zip_nul_member_name": [("weights/a\x00.ptd", b"x")],
}
for _name, _extra in ZIP_CASES.items():
    CASES[f"cli_unpack_{_name}"] = Case(_unpack_case(_extra), "cli")


@case("cli_unpack_deflate_bomb", "cli")
def _(i: Path, o: Path) -> Callable[[], Any]:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = b"".join(comp.compress(bytes(1 << 20)) for _ in range(64)) + comp.flush()
    path = write(i, "m.etm", stored_zip([("metadata.json", _meta_for({"model.pte": PTE})),
                                          ("model.pte", bomb)], method=8, declared=64 << 20))
    return lambda: ["unpack", str(path), "-o", str(o / "x")]


@case("cli_unpack_overlapping_members", "cli")
def _(i: Path, o: Path) -> Callable[[], Any]:
    entries = [("model.pte", PTE), ("tokenizer.model", PTE), ("weights/a.ptd", PTE),
               ("metadata.json", _meta_for({"model.pte": PTE}))]
    path = write(i, "m.etm", stored_zip(entries, shared=True))
    return lambda: ["unpack", str(path), "-o", str(o / "x")]


@case("cli_unpack_declared_4gib_member", "cli")
def _(i: Path, o: Path) -> Callable[[], Any]:
    path = write(i, "m.etm", stored_zip([("metadata.json", _meta_for({"model.pte": PTE})),
                                          ("model.pte", PTE)], declared=0xFFFFFFF0))
    return lambda: ["unpack", str(path), "-o", str(o / "x")]


@case("cli_unpack_sparse_1gib_not_a_zip", "cli")
def _(i: Path, o: Path) -> Callable[[], Any]:
    path = sparse(i, "m.etm", b"PK\x03\x04", 1 << 30)
    return lambda: ["unpack", str(path), "-o", str(o / "x")]


# --- the runner -------------------------------------------------------------------------------


class _Timeout(BaseException):
    pass


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise _Timeout


@pytest.fixture
def guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """Inputs dir, outputs dir; cwd is an empty folder; a hard alarm so a hang fails, not blocks."""
    i, o, cwd = tmp_path / "in", tmp_path / "out", tmp_path / "cwd"
    for d in (i, o, cwd):
        d.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("NO_COLOR", "1")
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        yield i, o
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        for path in i.rglob("*"):  # let pytest clean up chmod-000 inputs
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input(
    name: str, guarded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = CASES[name]
    in_dir, out_dir = guarded
    action = spec.build(in_dir, out_dir)
    capsys.readouterr()
    siblings = set(os.listdir(tmp_path.parent))
    before = _tree(tmp_path) - _tree(out_dir)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        if spec.expect == "cli":
            code = main(action())
        elif spec.expect == "ok":
            result = action()
            assert spec.check is not None and spec.check(result), f"{name}: read wrong: {result!r:.300}"
        else:
            assert isinstance(spec.expect, type)
            with pytest.raises(spec.expect, match=spec.match or None):
                action()
    except _Timeout:
        pytest.fail(f"{name}: still running after {HANG_SECONDS} s (a hang)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    out, err = capsys.readouterr()

    assert grew < MAX_RSS_GROWTH_KIB, f"peak memory grew by {grew // 1024} MiB"
    if spec.expect == "cli":
        assert code == 3, f"exit {code}: {err}"
        assert err.startswith("etm-compat: error: ") and err.count("\n") == 1, repr(err)
        assert "Traceback" not in err
        assert ESC not in out + err and "\r" not in out + err and "\x07" not in out + err
    assert os.listdir(Path.cwd()) == [], "wrote into the current directory"
    assert set(os.listdir(tmp_path.parent)) == siblings, "wrote beside tmp_path"
    assert _tree(tmp_path) - _tree(out_dir) == before, "wrote outside the output folder"
    assert not [p for p in out_dir.rglob("*") if p.is_file()], "a refused input left files"


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


# --- a refused template costs one render budget per command -------------------------------------


def test_a_refused_template_costs_one_render_budget_per_command(
    guarded: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Counted work, not time: the steps every rendering of the command charged, summed over
    distinct meters (renderings under one shared budget share its meter)."""
    from etm_compat.prompt.bounds import RECORD, RenderLimits

    in_dir, _ = guarded
    dep = in_dir / "dep"
    dep.mkdir()
    for path in (FIXTURES / "legacy" / "hf_style").iterdir():
        (dep / path.name).write_bytes(path.read_bytes())
    config = json.loads((dep / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% set l = range(99999)|list %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}"
    (dep / "tokenizer_config.json").write_text(json.dumps(config))
    messages = write(in_dir, "m.json", '[{"role": "user", "content": "Hi"}]')
    token = RECORD.set([])
    try:
        main(["render", str(dep), "--messages", str(messages)])  # inspect: 12 renderings
        budgets = RECORD.get() or []
    finally:
        RECORD.reset(token)
    capsys.readouterr()
    meters = {id(b.meter): b.meter for b in budgets}
    steps = sum(m.steps for m in meters.values())
    assert budgets, "no rendering was recorded: the command did not render the template"
    assert steps <= 2 * RenderLimits().max_steps, f"{len(budgets)} renderings, {steps:,} steps"
