"""Fuzz harnesses: one per reader, each a function of raw bytes, seeded from the real fixtures.

A harness feeds its bytes to one reader the way the tool meets untrusted input, and lets only
:class:`~etm_compat.errors.EtmError` pass (the contract of every reader). Anything else that
escapes is a finding. Both engines (:mod:`fuzz.engine`'s mutation loop and atheris) drive the
same harnesses, so a crash found by one replays under the other and in the test suite.

Targets: ``pte``, ``ptd``, ``tokenizer`` (sniff the head, then read the whole file),
``archive`` (open, verify, extract into a temp folder), ``metadata`` (bytes, and structured
mutations of a real metadata.json), ``template`` (Jinja snippets from a grammar, and mutated
vendor templates, rendered in the sandbox), ``prompt_format`` (``PromptFormat.from_json``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etm_compat.archive import open_archive
from etm_compat.archive.metadata import parse_metadata
from etm_compat.errors import EtmError
from etm_compat.formats.ptd import read_ptd_bytes
from etm_compat.formats.pte import read_pte_bytes
from etm_compat.formats.tokenizer.detect import read_tokenizer, sniff_tokenizer_bytes
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS, RenderLimits, render_chat
from etm_compat.prompt.substitution import PromptFormat, derive_prompt_format

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
TEMPLATES = ROOT / "etm_compat" / "prompt" / "families" / "templates"

#: A hostile template may run this long before the renderer's own limit stops it.
TEMPLATE_LIMITS = RenderLimits(max_seconds=0.25, max_output_chars=200_000)


@dataclass(frozen=True)
class Target:
    """One fuzz target: its seeds (real files) and the harness that runs one input."""

    name: str
    seeds: Callable[[], list[bytes]]
    run: Callable[[bytes], None]


class Scratch:
    """A private temp folder per process for harnesses that need files (tokenizer, archive)."""

    _dir: Path | None = None

    @classmethod
    def dir(cls) -> Path:
        if cls._dir is None or not cls._dir.is_dir():
            base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            cls._dir = Path(tempfile.mkdtemp(prefix="etm-fuzz-", dir=base))
        return cls._dir


def _read(*relative: str) -> list[bytes]:
    return [(FIXTURES / r).read_bytes() for r in relative if (FIXTURES / r).is_file()]


# --- pte / ptd --------------------------------------------------------------------------------


def pte_seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted((FIXTURES / "programs").glob("*.pte"))] + _read(
        "llama/tiny_llama.pte"
    )[:1]


def run_pte(data: bytes) -> None:
    try:
        info = read_pte_bytes(data, name="fuzz.pte")
    except EtmError:
        return
    json.dumps(info.to_json())  # what `inspect --json` does with it


def ptd_seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted((FIXTURES / "programs").glob("*.ptd"))]


def run_ptd(data: bytes) -> None:
    try:
        info = read_ptd_bytes(data, name="fuzz.ptd")
    except EtmError:
        return
    json.dumps(info.to_json())


# --- tokenizers -------------------------------------------------------------------------------


def tokenizer_seeds() -> list[bytes]:
    return _read(
        "tokenizers/sp.model",
        "tokenizers/hf_bpe/tokenizer.json",
        "tokenizers/tiktoken.model",
        "tokenizers/tokenizer.bin",
        "tokenizers/llama2c_original.bin",
    )


def run_tokenizer(data: bytes) -> None:
    sniff_tokenizer_bytes(data)  # must never raise: it only answers a format or None
    path = Scratch.dir() / "tokenizer.model"
    path.write_bytes(data)
    try:
        info = read_tokenizer(path, check_runner=False)
    except EtmError:
        return
    json.dumps(info.to_json())


# --- archive ----------------------------------------------------------------------------------


@functools.cache
def _good_archive() -> bytes:
    from etm_compat.cli.main import main

    out = Scratch.dir() / "seed.etm"
    code = main(["pack", str(FIXTURES / "legacy" / "with_ptd"), "-o", str(out), "--force"])
    if code != 0:
        raise RuntimeError(f"cannot pack the seed archive (exit {code})")
    data = out.read_bytes()
    out.unlink()
    return data


def archive_seeds() -> list[bytes]:
    return [_good_archive()]


def fix_zip_crcs(data: bytes) -> bytes:
    """Recompute every CRC32 the central directory can locate, so content mutations get past it.

    Lenient on purpose (a mutated zip): entries whose fields do not fit are left as they are.
    """
    buf = bytearray(data)
    eocd = buf.rfind(b"PK\x05\x06")
    if eocd < 0 or eocd + 22 > len(buf):
        return data
    count, _, cd_offset = struct.unpack_from("<HII", buf, eocd + 10)
    pos = cd_offset
    for _ in range(min(count, 64)):
        if pos + 46 > len(buf) or buf[pos : pos + 4] != b"PK\x01\x02":
            break
        size = struct.unpack_from("<I", buf, pos + 20)[0]
        n, m, k = struct.unpack_from("<HHH", buf, pos + 28)
        local = struct.unpack_from("<I", buf, pos + 42)[0]
        if local + 30 <= len(buf) and buf[local : local + 4] == b"PK\x03\x04":
            ln, lm = struct.unpack_from("<HH", buf, local + 26)
            start = local + 30 + ln + lm
            if start + size <= len(buf):
                crc = struct.pack("<I", zlib.crc32(buf[start : start + size]))
                buf[pos + 16 : pos + 20] = crc
                buf[local + 14 : local + 18] = crc
        pos += 46 + n + m + k
    return bytes(buf)


def run_archive(data: bytes) -> None:
    # Odd last byte: repair CRCs so mutations inside members (metadata.json) reach the parsers.
    if data and data[-1] & 1:
        data = fix_zip_crcs(data)
    work = Scratch.dir() / "archive"
    work.mkdir(exist_ok=True)
    path = work / "in.etm"
    path.write_bytes(data)
    dest = work / "out"
    try:
        with open_archive(path) as etm:
            etm.verify()
            etm.extract(dest, force=True)
    except EtmError:
        pass
    finally:
        stray = {p.name for p in work.iterdir()} - {"in.etm", "out"}
        if dest.is_dir():
            for child in dest.iterdir():
                if child.is_dir() and not child.is_symlink():
                    raise AssertionError(f"extract created a folder {child}")
                child.unlink()
        if stray:
            raise AssertionError(f"archive harness wrote outside its dest: {sorted(stray)}")


# --- metadata / prompt_format: bytes, and structured mutations of a real document ------------

HOSTILE_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**31, -(2**63), 2**64, 10**30, 0.5, -0.0, 1e308,
    "", "x", "\x1b[31mred\x1b[0m", "a\r\nb", "model.pte", "../evil", "/abs", "weights/../x.ptd",
    "\u202e", "\ud7ff", "0" * 70, [], [1, 2], [None], ["x"], {}, {"a": 1}, [[[[]]]],
    {"name": "model.pte", "role": "program", "sha256": "0" * 64, "size": 1},
)


class _Bytes:
    """Reads choices from fuzz bytes; past the end it answers zeros (deterministic)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        value = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return value

    def pick(self, items: Any) -> Any:
        seq = list(items)
        return seq[self.byte() % len(seq)] if seq else None

    def rest(self) -> bytes:
        return self.data[self.pos :]


def _fresh(value: Any) -> Any:
    """A private copy: a shared list inserted twice could later be inserted into itself."""
    return json.loads(json.dumps(value))


def mutate_document(doc: Any, src: _Bytes, rounds: int) -> Any:
    """Replace, delete or add one value somewhere in ``doc`` per round, choices from ``src``."""
    doc = json.loads(json.dumps(doc))
    for _ in range(rounds):
        parent: Any = None
        key: Any = None
        node = doc
        for _depth in range(src.byte() % 6):
            if isinstance(node, dict) and node:
                parent, key = node, src.pick(sorted(node))
            elif isinstance(node, list) and node:
                parent, key = node, src.byte() % len(node)
            else:
                break
            node = parent[key]
        if parent is None:
            continue
        action = src.byte() % 4
        if action == 0 and isinstance(parent, dict):
            del parent[key]
        elif action == 1 and isinstance(parent, dict):
            parent["x" + str(src.byte())] = _fresh(src.pick(HOSTILE_VALUES))
        else:
            parent[key] = _fresh(src.pick(HOSTILE_VALUES))
    return doc


@functools.cache
def _good_metadata() -> bytes:
    path = Scratch.dir() / "seed-meta.etm"
    path.write_bytes(_good_archive())
    with open_archive(path) as etm:
        view = etm.member_view("metadata.json")
        raw = bytes(view)
        view.release()
    path.unlink()
    return raw


def metadata_seeds() -> list[bytes]:
    good = _good_metadata()
    return [b"\x00" + good, b"\x01" + bytes(range(1, 40))]


def run_metadata(data: bytes) -> None:
    """First byte even: the rest is metadata.json bytes. Odd: mutate the real document."""
    if not data:
        return
    if data[0] % 2 == 0:
        raw = data[1:]
    else:
        src = _Bytes(data[1:])
        doc = mutate_document(json.loads(_good_metadata()), src, 1 + src.byte() % 4)
        raw = json.dumps(doc).encode()
    with contextlib.suppress(EtmError):
        parse_metadata(raw, name="fuzz/metadata.json")


@functools.cache
def _good_prompt_format() -> dict[str, Any]:
    template = (TEMPLATES / "meta-llama-Meta-Llama-3-8B-Instruct.jinja").read_text()
    fmt = derive_prompt_format(template, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    if fmt is None:
        raise RuntimeError("the Llama 3 template no longer reduces to a prompt_format")
    return fmt.to_json()


def prompt_format_seeds() -> list[bytes]:
    return [b"\x00" + json.dumps(_good_prompt_format()).encode(), b"\x01" + bytes(range(1, 40))]


def run_prompt_format(data: bytes) -> None:
    """First byte even: the rest is JSON text. Odd: mutate a real derived prompt_format."""
    if not data:
        return
    if data[0] % 2 == 0:
        try:
            obj = json.loads(data[1:])
        except (ValueError, RecursionError):
            return  # not JSON: the metadata parser refuses it before from_json sees it
    else:
        src = _Bytes(data[1:])
        obj = mutate_document(_good_prompt_format(), src, 1 + src.byte() % 4)
    with contextlib.suppress(EtmError):
        PromptFormat.from_json(obj)


# --- chat templates ---------------------------------------------------------------------------

SNIPPETS: tuple[str, ...] = (
    "{{ bos_token }}", "{{ eos_token }}", "{{ messages[0]['content'] }}", "{{ m.role }}",
    "{% for m in messages %}", "{% endfor %}", "{% if add_generation_prompt %}", "{% else %}",
    "{% endif %}", "{% if m.role == 'user' %}", "{% set x = 1 %}", "{{ x }}", "{{ x * 3 }}",
    "{% set ns = namespace(a='') %}", "{% set ns.a = ns.a ~ 'z' %}", "{{ ns.a }}",
    "{{ messages | tojson }}", "{{ tools | tojson(indent=2) }}", "{{ m.content | trim }}",
    "{{ raise_exception('no') }}", "{{ loop.index0 }}", "{% macro f(n) %}{{ n }}{% endmacro %}",
    "{{ f(1) }}", "{{ range(5) | list }}", "{{ 'ab' * 4 }}", "{{ '%s' | format(1) }}",
    "{{ ''.__class__ }}", "{{ cycler.__init__ }}", "{{ lipsum }}", "{{ self }}",
    "{{ strftime_now('%Y') }}", "{% generation %}", "{% endgeneration %}", "{{ 1 / 0 }}",
    "{{ messages[99] }}", "{{ undefined_name.attr }}", "{{ m['content'][::-1] }}",
    "{{ '{0}'.format(m) }}", "{{ 2 ** 64 }}", "{% break %}", "{% continue %}", "{{ (",
    "{%", "}}", "text ", "\n", "{# c #}", "{{ m.content.split(' ') | join('-') }}",
    "{{ messages | map(attribute='role') | join }}", "{{ x | string | center(9) }}",
    "{% for i in range(3) %}", "{{ i }}", "{{ dict(a=1).items() | list }}", "{{ [1,2][5] }}",
    "{% set c = messages | selectattr('role', 'equalto', 'user') | list %}", "{{ c | length }}",
    "{{ x is defined }}", "{{ none.x }}", "{% raw %}", "{% endraw %}", "{{ m.content[:10] }}",
)


@functools.cache
def _vendor_templates() -> tuple[str, ...]:
    return tuple(p.read_text() for p in sorted(TEMPLATES.glob("*.jinja")))


def template_from_bytes(data: bytes) -> str:
    """A template from fuzz bytes: snippets from the grammar, or a mutated vendor template."""
    src = _Bytes(data)
    if src.byte() % 2 == 0:
        return "".join(SNIPPETS[b % len(SNIPPETS)] for b in src.rest()[:64])
    text = src.pick(_vendor_templates())
    for _ in range(1 + src.byte() % 4):
        at = (src.byte() << 8 | src.byte()) % (len(text) + 1)
        span = src.byte() % 24
        action = src.byte() % 4
        if action == 0:
            text = text[:at] + text[at + span :]
        elif action == 1:
            text = text[:at] + SNIPPETS[src.byte() % len(SNIPPETS)] + text[at:]
        elif action == 2:
            text = text[:at] + text[at : at + span] * 2 + text[at + span :]
        else:
            text = text[:at] + chr(src.byte()) + text[at + 1 :]
    return text


def template_seeds() -> list[bytes]:
    seeds = [bytes([0]) + bytes(range(0, 64, 3)), bytes([0, 4, 7, 18, 5, 8])]
    seeds += [bytes([1, i, 1, 0, 0, 0, 0]) for i in range(len(_vendor_templates()))]
    return seeds


def run_template(data: bytes) -> None:
    template = template_from_bytes(data)
    conversation = STANDARD_CONVERSATIONS["system_multi_turn"]
    with contextlib.suppress(EtmError):
        render_chat(
            template, conversation, bos_token="<s>", eos_token="</s>", limits=TEMPLATE_LIMITS
        )


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("pte", pte_seeds, run_pte),
        Target("ptd", ptd_seeds, run_ptd),
        Target("tokenizer", tokenizer_seeds, run_tokenizer),
        Target("archive", archive_seeds, run_archive),
        Target("metadata", metadata_seeds, run_metadata),
        Target("template", template_seeds, run_template),
        Target("prompt_format", prompt_format_seeds, run_prompt_format),
    )
}

__all__ = ["TARGETS", "Target", "fix_zip_crcs", "mutate_document", "template_from_bytes"]
