"""The hostile corpus of issue 15, as data: one :class:`Case` per hostile input or output.

Each case builds its inputs in its own folder (a :class:`Kit`) and names the command line to run,
the exit code the README documents for it, and the only paths it may write. The cases are
written from the *classes* of issue 15, several per class:

``template``   unbounded work in a chat template (nested loops over strings and lists, nested
               lists printed, amplifying filters): refused within the render deadline
``json``       huge, deep or odd JSON/YAML in every JSON input (--messages, configs, metadata,
               tokenizer files, generation_config), and configs that are not what they claim
``output``     every output flag pointed at a source, an existing file, a folder, a file used
               as a folder, a symlink or hard link to a source: exit 4, nothing written
``cache``      bad ``--max-size``/``--older-than`` values and a damaged cache folder
``name``       file names that are not UTF-8, for every command
``lie``        archives whose metadata.json lies (members, roles, tokenizer, weights, hashes,
               sizes, versions, programs)
``special``    FIFOs, sockets, devices, symlink loops where a file is expected
``truncated``  truncated or oversized programs, weights and tokenizers
``terminal``   file names with control characters, bidi overrides and newlines, which must
               reach the terminal escaped
``native``     a tokenizer that crashes the runner's native loader (SIGSEGV): a finding, and
               the command lives (run in a child, where a signal would show)

tests/test_hostile_corpus.py runs them and checks the common contract.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import FIXTURES

LEGACY = FIXTURES / "legacy"
MESSAGES = b'[{"role": "user", "content": "Hi"}]'


@dataclass(frozen=True)
class Run:
    """What to run: the CLI's arguments, its stdin and extra environment variables."""

    argv: Sequence[str]
    stdin: bytes = b""
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    build: Callable[[Kit], Run | Sequence[str]]
    exit: int
    #: Glob patterns (relative to the case folder) of the paths the run may create or change.
    outputs: tuple[str, ...] = ()
    #: Text the error line (exit 2-5) or the standard output (exit 0/1) must contain.
    needle: str = ""
    #: Run ``python -m etm_compat`` in a child process: for inputs that may hang, blow up memory
    #: or kill the process with a signal (the in-process run could not observe those).
    subprocess: bool = False
    #: A bug found by the corpus whose fix lies outside the test's files: ``xfail(strict=True)``.
    bug: str = ""
    #: A hang guard, not a speed bound (the machine is shared): a case still running is a hang.
    timeout: float = 60.0


class Kit:
    """Builds one case's inputs inside its folder ``root`` (everything a case reads is here)."""

    def __init__(self, root: Path, archives: Mapping[str, Path]) -> None:
        self.root = root
        self._archives = archives

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def s(self, name: str) -> str:
        return str(self.root / name)

    def dep(self, src: str = "with_ptd", name: str = "dep") -> Path:
        """A copy of ``fixtures/legacy/<src>`` (the with_ptd one is 20 KiB: cheap)."""
        dest = self.root / name
        shutil.copytree(LEGACY / src, dest)
        return dest

    def archive(self, src: str = "with_ptd", name: str = "m.etm") -> Path:
        """A copy of a good archive packed from ``fixtures/legacy/<src>`` (packed once per run)."""
        dest = self.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._archives[src], dest)
        return dest

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
        return path

    def fifo(self, name: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        return path

    def socket(self, name: str) -> Path:
        path = self.root / name
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(path))  # the file stays after the socket closes
        finally:
            sock.close()
        return path

    def sparse(self, name: str, head: bytes, size: int) -> Path:
        path = self.write(name, head)
        os.truncate(path, size)
        return path

    def json_config(self, dep: Path, name: str, change: Callable[[Any], Any]) -> None:
        """Replace ``dep/name`` (a JSON file) by ``change(parsed)``, written as JSON text."""
        path = dep / name
        value = change(json.loads(path.read_text()) if path.exists() else {})
        path.write_text(value if isinstance(value, str) else json.dumps(value))


# --- shared shapes ---------------------------------------------------------------------------

DEEP = "[" * 20_000 + "]" * 20_000
HUGE_INT = "9" * 5000  # over Python's int/str conversion limit
BIG_INT = "9" * 4000  # under it: parses, then must not overflow anything


def with_key(text: str, key: str, raw: str) -> str:
    """JSON object text with ``"key": raw`` (raw JSON text) added at the end."""
    return text.rstrip().rstrip("}") + f', "{key}": {raw}}}'


CASES: list[Case] = []


def add(name: str, kind: str, exit: int, **kw: Any) -> Callable[[Callable[[Kit], Any]], Any]:
    def register(build: Callable[[Kit], Any]) -> Callable[[Kit], Any]:
        CASES.append(Case(name, kind, build, exit, **kw))
        return build

    return register


def _link(k: Kit, name: str, target: str | Path) -> Path:
    """A symbolic link ``name`` to ``target`` in the case folder."""
    path = k / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


def pte_bytes(src: str = "programs/constants_all.pte") -> bytes:
    return (FIXTURES / src).read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- template: unbounded work in a chat template -------------------------------------------------
# Each template is put in a folder's tokenizer_config.json and rendered: it must be refused
# (exit 3) within the render deadline, and within the child's memory limit.

TEMPLATES = {
    "for_string_in_for_list": "{% for m in range(99999)|list %}{% for c in 'x' * 900000 %}{% endfor %}{% endfor %}",
    "for_list_in_for_list": "{% set l = range(99999)|list %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}",
    "for_words_in_for_words": "{% set w = ('x ' * 400000).split() %}{% for a in w %}{% for b in w %}{% endfor %}{% endfor %}",
    "for_messages_squared": "{% set m = messages * 30000 %}{% for a in m %}{% for b in m %}{% endfor %}{% endfor %}",
    "for_string_printing": "{% for c in 'x' * 900000 %}{{ 'y' * 900000 }}{% endfor %}",
    "nested_list_printed": "{{ [[0] * 99999] * 99999 }}",
    "nested_list_tojson": "{{ ([[0] * 99999] * 99999) | tojson }}",
    "nested_list_joined": "{{ ([['x'] * 99999] * 99999) | join }}",
    "nested_list_summed": "{{ ([[0] * 99999] * 99999) | sum(start=[]) | length }}",
    "join_amplifies": "{{ ('x' * 99999) | join('y' * 99999) }}",
    "replace_amplifies": "{{ ('x' * 99999) | replace('x', 'y' * 99999) }}",
    "indent_amplifies": "{{ ('x\\n' * 400000) | indent(400000) }}",
    "int_squaring": "{% set ns = namespace(n=2) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n }}",
    "int_too_long_to_print": "{% set ns = namespace(n=10) %}{% for i in range(13) %}{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n }}",
    "list_doubling": "{% set ns = namespace(l=[0]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | length }}",
    "recursive_loop": "{% for x in [[0]] recursive %}{{ loop([x]) }}{% endfor %}",
    "sorted_nested_lists": "{{ ([[0] * 99999] * 99999) | sort | first | length }}",
    "map_over_nested": "{{ ([[0] * 99999] * 99999) | map('string') | map('length') | sum }}",
}
#: A hang guard: a render is bounded by its deadline and step limit, but a command renders a
#: folder's template many times (inference, checks) and children run side by side.
TEMPLATE_GUARD = 60.0


def _template_dep(k: Kit, template: str) -> Path:
    dep = k.dep("hf_style")
    k.json_config(dep, "tokenizer_config.json", lambda c: {**c, "chat_template": template})
    k.write("m.json", MESSAGES)
    return dep


for _name, _template in TEMPLATES.items():
    CASES.append(Case(
        f"render_{_name}", "template",
        lambda k, t=_template: ["render", str(_template_dep(k, t)), "--messages", k.s("m.json")],
        3, subprocess=True, timeout=TEMPLATE_GUARD,
    ))  # fmt: skip

# The same refusal through the other commands that render a folder's template: a finding, not a
# hang, and the run goes on (pack writes the archive; upgrade converts the tree). A template that
# is refused fast keeps these cheap: a command renders a folder's template about 25 times.
_HOSTILE_TEMPLATE = TEMPLATES["nested_list_printed"]
for _argv, _exit, _outputs in (
    (["inspect", "{dep}"], 0, ()),
    (["diagnose", "{dep}"], 0, ()),
    (["pack", "{dep}", "-o", "{root}/a.etm"], 0, ("a.etm",)),
    (["upgrade", "{root}/tree", "--out", "{root}/out", "--jobs", "1"], 0, ("out", "out/**")),
):

    def _build(k: Kit, argv: list[str] = _argv) -> list[str]:
        dep = _template_dep(k, _HOSTILE_TEMPLATE)
        if "{root}/tree" in argv:
            (k / "tree").mkdir()
            dep = dep.rename(k / "tree" / "dep")
        return [a.format(dep=dep, root=k.root) for a in argv]

    CASES.append(Case(f"{_argv[0]}_hostile_template", "template", _build, _exit, _outputs,
                      needle="template", subprocess=True, timeout=TEMPLATE_GUARD))


@add("pack_chat_template_flag_hostile", "template", 0, outputs=("a.etm",), needle="template",
     subprocess=True, timeout=TEMPLATE_GUARD)
def _(k: Kit) -> list[str]:
    k.write("t.jinja", _HOSTILE_TEMPLATE)
    return ["pack", str(k.dep()), "--chat-template", k.s("t.jinja"), "-o", k.s("a.etm")]


# --- json: huge, deep or odd JSON in every JSON input ----------------------------------------------

BAD_MESSAGES: dict[str, bytes] = {
    "deep": DEEP.encode(),
    "huge_int": f'[{{"role": "user", "content": "x", "n": {HUGE_INT}}}]'.encode(),
    "overflowing_float": b'[{"role": "user", "content": "x", "n": 1e400}]',
    "nan": b'[{"role": "user", "content": NaN}]',
    "not_utf8": b'[{"role": "user", "content": "\xff"}]',
    "an_object": b'{"role": "user", "content": "x"}',
    "content_a_number": b'[{"role": "user", "content": 12}]',
    "too_many": b"[" + b",".join([b'{"role": "user", "content": "x"}'] * 10_001) + b"]",
    "truncated": b'[{"role": "user", "content": "x"',
    "empty": b"",
}
for _name, _data in BAD_MESSAGES.items():
    CASES.append(Case(
        f"messages_{_name}", "json",
        lambda k, d=_data: ["render", str(k.dep()), "--messages", str(k.write("m.json", d))], 3,
    ))  # fmt: skip


@add("messages_lone_surrogate", "json", 3)
def _(k: Kit) -> list[str]:
    return ["render", str(k.dep()), "--messages", str(k.write("m.json", b'[{"role": "user", "content": "\\udc80"}]'))]


@add("messages_over_4_mib", "json", 3, needle="bytes")
def _(k: Kit) -> list[str]:
    return ["render", str(k.dep()), "--messages", str(k.sparse("m.json", b"[", 5 << 20))]


@add("messages_deep_on_stdin", "json", 3)
def _(k: Kit) -> Run:
    return Run(["render", str(k.dep()), "--messages", "-"], stdin=DEEP.encode())


@add("messages_endless_stdin_is_cut_at_4_mib", "json", 3, needle="bytes")
def _(k: Kit) -> Run:
    return Run(["render", str(k.dep()), "--messages", "-"], stdin=b" " * (6 << 20))


# A deployment's JSON configs: a broken one is an error finding (input-unreadable), the run goes on.
CONFIG_SHAPES: dict[str, str] = {
    "deep": DEEP,
    "huge_int": f'{{"bos_token_id": {HUGE_INT}}}',
    "nan": '{"eos_token_id": NaN}',
    "a_list": "[1, 2, 3]",
    "not_utf8": '{"a": "\udcff"}',
    "truncated": '{"model_type": "qwen2"',
}


def _broken_config(k: Kit, name: str, text: str) -> list[str]:
    dep = k.dep("hf_style")
    k.write(f"dep/{name}", text)
    return ["diagnose", str(dep)]


for _file in ("config.json", "tokenizer_config.json", "generation_config.json"):
    for _shape, _text in CONFIG_SHAPES.items():
        CASES.append(Case(
            f"{_file.removesuffix('.json')}_{_shape}", "json",
            lambda k, f=_file, t=_text: _broken_config(k, f, t), 1, needle="input-unreadable",
        ))  # fmt: skip

# Values that parse but are absurd: a config's numbers feed the inference of bos/eos/lengths.
ODD_VALUES: dict[str, tuple[str, str, str]] = {
    "eos_id_4000_digits": ("generation_config.json", "eos_token_id", BIG_INT),
    "eos_id_overflowing_float": ("generation_config.json", "eos_token_id", "1e400"),
    "eos_id_negative": ("generation_config.json", "eos_token_id", "-7"),
    "eos_id_deep_list": ("generation_config.json", "eos_token_id", "[" * 30 + "2" + "]" * 30),
    "eos_ids_10k": ("generation_config.json", "eos_token_id", json.dumps(list(range(10_000)))),
    "max_length_4000_digits": ("generation_config.json", "max_length", BIG_INT),
    "bos_id_a_string": ("config.json", "bos_token_id", '"zero"'),
    "vocab_size_4000_digits": ("config.json", "vocab_size", BIG_INT),
    "max_positions_overflowing": ("config.json", "max_position_embeddings", "1e400"),
    "eos_token_an_object": ("tokenizer_config.json", "eos_token", '{"content": {"content": 3}}'),
    "chat_template_a_number": ("tokenizer_config.json", "chat_template", "12"),
    "chat_template_named_list_junk": ("tokenizer_config.json", "chat_template", '[{"name": 1}, 5, null]'),
    "added_tokens_decoder_junk": ("tokenizer_config.json", "added_tokens_decoder", '{"x": 1, "99999999999999999999": {"content": 5}}'),
}
for _name, (_file, _key, _raw) in ODD_VALUES.items():

    def _odd(k: Kit, f: str = _file, key: str = _key, raw: str = _raw) -> list[str]:
        dep = k.dep("hf_style")
        (dep / f).write_text(with_key((dep / f).read_text(), key, raw))
        return ["pack", str(dep), "-o", k.s("a.etm")]

    CASES.append(Case(f"odd_{_name}", "json", _odd, 0, ("a.etm",), needle="wrote"))


def _export_llm(k: Kit, yaml_text: str | None = None, params: str | None = None) -> list[str]:
    dep = k.dep("export_llm")
    if yaml_text is not None:
        (dep / "export_config.yaml").write_text(yaml_text)
    if params is not None:
        (dep / "params.json").write_text(params)
    return ["diagnose", str(dep)]


EXPORT_BASE = "base:\n  model_class: llama2\n  params: params.json\n"
YAML_BOMB = EXPORT_BASE + "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(12)
)
for _name, _yaml in {
    "yaml_alias_bomb": YAML_BOMB,
    "yaml_deep": EXPORT_BASE + "a: " + "[" * 5000 + "]" * 5000 + "\n",
    "yaml_python_object_tag": EXPORT_BASE + "a: !!python/object/apply:os.system ['touch pwned']\n",
}.items():
    CASES.append(Case(f"export_config_{_name}", "json", lambda k, y=_yaml: _export_llm(k, y), 1,
                      needle="input-unreadable"))
# base.metadata is a JSON string inside the yaml: one that cannot be read is no evidence (exit 0).
for _name, _yaml, _bug in (
    ("base_not_a_mapping", "base: [model_class, params]\n", ""),
    ("metadata_huge_int", EXPORT_BASE + f"  metadata: '{{\"get_bos_id\": {HUGE_INT}}}'\n", ""),
    ("metadata_deep_json", EXPORT_BASE + "  metadata: '" + "[" * 5000 + "]" * 5000 + "'\n",
     ""),
):
    CASES.append(Case(f"export_config_{_name}", "json", lambda k, y=_yaml: _export_llm(k, y), 0, bug=_bug))
CASES.append(Case("params_deep", "json", lambda k: _export_llm(k, params=DEEP), 1, needle="input-unreadable"))
CASES.append(Case("params_huge_int", "json", lambda k: _export_llm(k, params=f'{{"vocab_size": {HUGE_INT}}}'),
                  1, needle="input-unreadable"))  # fmt: skip


def _tokenizer_json(k: Kit, text: str) -> list[str]:
    dep = k.dep("hf_style")
    (dep / "tokenizer.json").write_text(text)
    return ["inspect", str(dep / "tokenizer.json")]


for _name, _text in {
    "deep": DEEP,
    "huge_id": f'{{"model": {{"type": "BPE", "vocab": {{"a": {HUGE_INT}}}, "merges": []}}}}',
    "nan_id": '{"model": {"type": "BPE", "vocab": {"a": NaN}, "merges": []}}',
    "added_token_id_4000_digits": f'{{"added_tokens": [{{"id": {BIG_INT}, "content": "x"}}], "model": {{"type": "BPE", "vocab": {{}}, "merges": []}}}}',
}.items():
    CASES.append(Case(f"tokenizer_json_{_name}", "json", lambda k, t=_text: _tokenizer_json(k, t), 3))


# --- output: every output flag pointed at a source, an existing file, a folder, a file as folder --


def _tree(k: Kit, src: str = "with_ptd") -> Path:
    """``tree/dep``: a tree of one deployment for upgrade."""
    (k / "tree").mkdir()
    return k.dep(src, "tree/dep")


def _out(case: str, build: Callable[[Kit], Sequence[str]], needle: str = "", bug: str = "") -> None:
    CASES.append(Case(case, "output", build, 4, needle=needle, bug=bug))


UNPACK_OVER_ARCHIVE = ""  # fixed: kept as a name so the cases read the same


# A file the run reads is never written, even with --force (the error says it is read).
for _target in ("program.pte", "tokenizer.model", "weights.ptd"):
    _out(f"pack_o_is_its_{_target.split('.')[0]}_force",
         lambda k, t=_target: ["pack", str(k.dep()), "-o", str(k / "dep" / t), "--force"], "reads")
_out("pack_o_is_its_program_without_force",
     lambda k: ["pack", str(k.dep()), "-o", str(k / "dep" / "program.pte")])
_out("pack_o_is_the_tokenizer_flag_file_force",
     lambda k: ["pack", str(k.dep()), "--tokenizer", str(k.write("t/tok.model", (k / "dep/tokenizer.model").read_bytes())),
                "-o", k.s("t/tok.model"), "--force"], "reads")  # fmt: skip
_out("pack_o_is_the_ptd_flag_file_force",
     lambda k: ["pack", str(k.dep()), "--ptd", str(k / "dep" / "weights.ptd"), "-o", str(k / "dep" / "weights.ptd"), "--force"], "reads")
_out("pack_o_is_the_chat_template_file_force",
     lambda k: ["pack", str(k.dep()), "--chat-template", str(k.write("t.jinja", "{{ messages }}")), "-o", k.s("t.jinja"), "--force"], "reads")  # fmt: skip
_out("pack_pte_o_is_its_sibling_tokenizer_force",
     lambda k: ["pack", str(k.dep() / "program.pte"), "-o", str(k / "dep" / "tokenizer.model"), "--force"], "reads")


@add("pack_o_symlink_to_its_program_force", "output", 4, needle="reads")
def _(k: Kit) -> list[str]:
    dep = k.dep()
    (k / "link.etm").symlink_to(dep / "program.pte")
    return ["pack", str(dep), "-o", k.s("link.etm"), "--force"]


@add("pack_o_hard_link_to_its_tokenizer_force", "output", 4, needle="reads")
def _(k: Kit) -> list[str]:
    dep = k.dep()
    os.link(dep / "tokenizer.model", k / "hard.etm")
    return ["pack", str(dep), "-o", k.s("hard.etm"), "--force"]


@add("unpack_over_its_own_archive_force", "output", 4, needle="reads", bug=UNPACK_OVER_ARCHIVE)
def _(k: Kit) -> list[str]:
    """An archive that is named like one of its members, unpacked into its own folder."""
    return ["unpack", str(k.archive(name="out/model.pte")), "-o", k.s("out"), "--force"]


@add("unpack_over_its_own_archive_as_tokenizer_force", "output", 4, needle="reads", bug=UNPACK_OVER_ARCHIVE)
def _(k: Kit) -> list[str]:
    return ["unpack", str(k.archive(name="out/tokenizer.model")), "-o", k.s("out"), "--force"]


for _name, _build in {
    "diagnose_o_its_tokenizer_config": lambda k: ["diagnose", str(k.dep("hf_style")), "-o", str(k / "dep/tokenizer_config.json")],
    "diagnose_o_its_archive": lambda k: ["diagnose", str(k.archive()), "--format", "md", "-o", k.s("m.etm")],
    "diagnose_pte_o_its_sibling_tokenizer": lambda k: ["diagnose", str(k.dep() / "program.pte"), "--format", "md", "-o", str(k / "dep/tokenizer.model")],
    "diagnose_tree_o_a_deep_source": lambda k: ["diagnose", str(_tree(k).parent), "--format", "md", "-o", str(k / "tree/dep/weights.ptd")],
    "upgrade_report_is_a_source": lambda k: ["upgrade", str(_tree(k, "hf_style").parent), "--out", k.s("out"), "--jobs", "1",
                                             "--report", str(k / "tree/dep/config.json"), "--overwrite-reports"],
    "upgrade_in_place_report_is_a_source": lambda k: ["upgrade", str(_tree(k, "hf_style").parent), "--in-place", "--jobs", "1",
                                                      "--report", str(k / "tree/dep/generation_config.json"), "--overwrite-reports"],
}.items():  # fmt: skip
    _out(f"{_name}_force", lambda k, b=_build: [*b(k), "--force"], "reads")
    _out(_name, _build)

# An existing file is replaced only with --force (upgrade: --overwrite-reports).
_out("pack_o_existing", lambda k: ["pack", str(k.dep()), "-o", str(k.write("a.etm", "keep"))], "--force")
_out("unpack_o_existing_member", lambda k: ["unpack", str(k.archive()), "-o", str(k.write("u/model.pte", "keep").parent)], "--force")
_out("diagnose_o_existing", lambda k: ["diagnose", str(k.dep()), "-o", str(k.write("r.md", "keep"))], "--force")
_out("upgrade_report_existing", lambda k: ["upgrade", str(_tree(k).parent), "--out", k.s("out"), "--jobs", "1",
                                           "--report", str(k.write("r.md", "keep"))], "--overwrite-reports")  # fmt: skip

# A folder where a file goes, and a file where a folder goes.
for _name, _build in {
    "pack_o_a_folder": lambda k: ["pack", str(k.dep()), "-o", str(k.write("x.etm/keep", "x").parent), "--force"],
    "unpack_folder_in_the_way": lambda k: ["unpack", str(k.archive()), "-o", str(k.write("u/model.pte/keep", "x").parent.parent), "--force"],
    "diagnose_o_a_folder": lambda k: ["diagnose", str(k.dep()), "-o", str(k.write("r.md/keep", "x").parent), "--force"],
    "upgrade_report_a_folder": lambda k: ["upgrade", str(_tree(k).parent), "--out", k.s("out"), "--jobs", "1",
                                          "--report", str(k.write("r.md/keep", "x").parent), "--overwrite-reports"],
    "pack_o_under_a_file": lambda k: ["pack", str(k.dep()), "-o", str(k.write("afile", "keep") / "x.etm")],
    "unpack_o_a_file": lambda k: ["unpack", str(k.archive()), "-o", str(k.write("afile", "keep")), "--force"],
    "unpack_o_under_a_file": lambda k: ["unpack", str(k.archive()), "-o", str(k.write("afile", "keep") / "sub")],
    "diagnose_o_under_a_file": lambda k: ["diagnose", str(k.dep()), "-o", str(k.write("afile", "keep") / "r.md")],
    "upgrade_report_under_a_file": lambda k: ["upgrade", str(_tree(k).parent), "--out", k.s("out"), "--jobs", "1",
                                              "--report", str(k.write("afile", "keep") / "r.md")],
}.items():  # fmt: skip
    _out(_name, _build)
_out("upgrade_out_under_a_file",
     lambda k: ["upgrade", str(_tree(k).parent), "--out", str(k.write("afile", "keep") / "o"), "--jobs", "1"])
_out("unpack_o_is_the_archive_itself", lambda k: ["unpack", str(k.archive()), "-o", k.s("m.etm"), "--force"])
_out("upgrade_out_is_a_source_file",
     lambda k: ["upgrade", str(_tree(k).parent), "--out", str(k / "tree/dep/program.pte"), "--jobs", "1"])


# --- cache: bad values and a damaged cache folder ----------------------------------------------------

KEY = "a" * 64


def _cache(argv: Sequence[str], env_dir: Callable[[Kit], Path] | None = None) -> Callable[[Kit], Run]:
    def build(k: Kit) -> Run:
        folder = env_dir(k) if env_dir else k / "cache"
        return Run(["cache", *argv], env={"ETM_CACHE_DIR": str(folder)})

    return build


for _value in ("nan", "inf", "-1", "", "1e400", "lots", "5Q"):
    CASES.append(Case(f"prune_max_size_{_value or 'empty'}", "cache", _cache(["prune", "--max-size", _value]), 2,
                      needle="not a size" if _value else ""))  # fmt: skip
for _value in ("nan", "inf", "-1"):
    CASES.append(Case(f"prune_older_than_{_value}", "cache", _cache(["prune", "--older-than", _value]), 2,
                      needle="--older-than"))  # fmt: skip
CASES.append(Case("prune_max_size_overflowing_its_unit", "cache", _cache(["prune", "--max-size", "1e300T"]), 2))
CASES.append(Case("prune_older_than_huge", "cache", _cache(["prune", "--older-than", "1e308"]), 0))
CASES.append(Case("prune_without_a_rule", "cache", _cache(["prune"]), 2, needle="--all"))

MARKERS: dict[str, bytes] = {
    "deep": DEEP.encode(),
    "not_utf8": b"\xff\xfe",
    "files_a_list": b'{"files": []}',
    "size_a_string": b'{"files": {"a": {"size": "x"}}}',
    "size_overflowing": b'{"files": {"a": {"size": 1e400}}}',
    "size_huge_int": b'{"files": {"a": {"size": ' + HUGE_INT.encode() + b"}}}",
    "created_nan": b'{"files": {}, "created": NaN}',
    "empty": b"",
}
MARKER_NAN = ""  # fixed: kept as a name so the cases read the same
for _name, _marker in MARKERS.items():

    def _damaged(k: Kit, marker: bytes = _marker) -> Run:
        k.write(f"cache/{KEY}/.complete", marker)
        k.write(f"cache/{KEY}/model.pte", b"x")
        return Run(["cache", "prune", "--max-size", "0"])

    def _listed(k: Kit, marker: bytes = _marker) -> Run:
        k.write(f"cache/{KEY}/.complete", marker)
        return Run(["cache", "list"])

    # A damaged entry is not complete: listed as nothing, left alone by prune (not a temp folder).
    _bug = MARKER_NAN if _name == "created_nan" else ""
    CASES.append(Case(f"damaged_marker_{_name}", "cache", _damaged, 0, needle="removed 0 entries"))
    CASES.append(Case(f"list_damaged_marker_{_name}", "cache", _listed, 0, needle="0 entries", bug=_bug))


@add("list_json_damaged_marker_created_nan", "cache", 0, bug=MARKER_NAN)
def _(k: Kit) -> Run:
    k.write(f"cache/{KEY}/.complete", MARKERS["created_nan"])
    return Run(["cache", "list", "--json"])


@add("prune_dangling_temp_symlink", "cache", 0, outputs=("cache/.tmp-dead",))
def _(k: Kit) -> Run:
    (k / "cache").mkdir()
    (k / "cache" / ".tmp-dead").symlink_to(k / "nowhere")
    return Run(["cache", "prune", "--all"])


@add("prune_never_follows_an_entry_symlink_out", "cache", 0, outputs=("cache/*",))
def _(k: Kit) -> Run:
    outside = k.write("precious/keep.txt", "keep").parent
    k.write(f"precious/{KEY}/.complete", b'{"files": {}}')
    (k / "cache").mkdir()
    (k / "cache" / KEY).symlink_to(outside / KEY)
    (k / "cache" / ".tmp-link").symlink_to(outside)
    k.write(f"cache/{'b' * 64}/.complete", b'{"files": {}}')
    (k / "cache" / ("b" * 64) / "inner").symlink_to(outside)
    return Run(["cache", "prune", "--all"])


@add("list_marker_is_a_fifo", "cache", 0, subprocess=True, timeout=5)
def _(k: Kit) -> Run:
    k.fifo(f"cache/{KEY}/.complete")
    return Run(["cache", "list"])


@add("list_marker_is_dev_zero", "cache", 0)
def _(k: Kit) -> Run:
    (k / "cache" / KEY).mkdir(parents=True)
    (k / "cache" / KEY / ".complete").symlink_to("/dev/zero")
    return Run(["cache", "list"])


for _name, _where, _exit in (
    ("a_file", lambda k: k.write("afile", "keep"), 2),
    ("under_a_file", lambda k: k.write("afile", "keep") / "cache", 2),
    ("a_fifo", lambda k: k.fifo("cache-fifo"), 2),
    ("a_dangling_symlink", lambda k: _link(k, "link", k / "nowhere"), 0),
    ("a_symlink_loop", lambda k: _link(k, "loop", k / "loop"), 3),
    ("named_in_bytes", lambda k: k / os.fsdecode(b"cache\xff"), 0),
):
    for _argv in (["list"], ["prune", "--all"]):
        CASES.append(Case(f"{_argv[0]}_cache_dir_{_name}", "cache", _cache(_argv, _where), _exit))


# --- name: file names that are not UTF-8 (legal on Linux), for every command ---------------------
# stdout is strict UTF-8, as under a desktop's UTF-8 locale, where a raw surrogate does not encode.


def b(name: bytes) -> str:
    """A name in bytes as Python hands it over (sys.argv, os.listdir): surrogate-escaped."""
    return os.fsdecode(name)


def _bad_dep(k: Kit, src: str = "with_ptd") -> Path:
    """``dep\\xff`` holding ``src`` with its program renamed ``prog\\xfe.pte``."""
    dep = k.dep(src, b(b"dep\xff"))
    program = next(dep.glob("*.pte"))
    program.rename(dep / b(b"prog\xfe.pte"))
    return dep


def _name(case: str, build: Callable[[Kit], Sequence[str]], exit: int = 0, outputs: tuple[str, ...] = (),
          needle: str = "", bug: str = "") -> None:  # fmt: skip
    CASES.append(Case(case, "name", build, exit, outputs, needle, bug=bug))


JSON_SURROGATES = ""  # fixed: kept as a name so the cases read the same


OUT = b(b"out\xfe.etm")
_name("pack_folder_and_program", lambda k: ["pack", str(_bad_dep(k)), "-o", k.s(OUT)], outputs=(OUT,), needle="wrote")
_name("pack_json", lambda k: ["pack", str(_bad_dep(k)), "-o", k.s(OUT), "--json"], outputs=(OUT,), needle="archive",
      bug=JSON_SURROGATES)
_name("pack_tokenizer_flag", outputs=(OUT,), build=lambda k: [
    "pack", str(k.dep()), "--tokenizer", str((k / "dep/tokenizer.model").rename(k / b(b"tok\xff.model"))), "-o", k.s(OUT)])
_name("pack_ptd_flag", outputs=(OUT,), build=lambda k: [
    "pack", str(k.dep()), "--ptd", str((k / "dep/weights.ptd").rename(k / b(b"w\xff.ptd"))), "-o", k.s(OUT)])
_name("pack_chat_template_flag", outputs=(OUT,), build=lambda k: [
    "pack", str(k.dep()), "--chat-template", str(k.write(b(b"t\xff.jinja"), "{{ messages }}")), "-o", k.s(OUT)])
_name("pack_o_existing_undecodable", exit=4, needle="exists", build=lambda k: [
    "pack", str(_bad_dep(k)), "-o", str(k.write(OUT, "keep"))])
_name("unpack", lambda k: ["unpack", str(k.archive(name=b(b"a\xff.etm"))), "-o", k.s(b(b"u\xfe"))],
      outputs=(b(b"u\xfe"), b(b"u\xfe/*")), needle="wrote")
_name("verify", lambda k: ["verify", str(k.archive(name=b(b"a\xff.etm")))], needle="OK")
_name("verify_json", lambda k: ["verify", str(k.archive(name=b(b"a\xff.etm"))), "--json"], needle="findings",
      bug=JSON_SURROGATES)
_name("inspect_folder", lambda k: ["inspect", str(_bad_dep(k))], needle="prog")
_name("inspect_folder_json", lambda k: ["inspect", str(_bad_dep(k)), "--json"], needle="prog", bug=JSON_SURROGATES)
_name("inspect_garbage", lambda k: ["inspect", str(k.write(b(b"x\xff.pte"), b"garbage" * 10))], exit=3, needle="x\\udcff.pte")
for _ext in ("md", "json", "html"):
    _report = b(b"r\xff." + _ext.encode())
    _name(f"diagnose_o_{_ext}", lambda k, r=_report: ["diagnose", str(_bad_dep(k)), "-o", k.s(r)], outputs=(_report,))
_name("upgrade_tree_out_and_report", outputs=("out*",), needle="1", build=lambda k: [
    "upgrade", str(_bad_dep(k).parent), "--out", k.s(b(b"out\xfe")), "--jobs", "1", "--report", k.s(b(b"out\xfe/r\xff.md"))])
_name("diagnose_json", lambda k: ["diagnose", str(_bad_dep(k)), "--json"], needle="prog", bug=JSON_SURROGATES)
_name("upgrade_json", outputs=("out*",), needle="written", bug=JSON_SURROGATES, build=lambda k: [
    "upgrade", str(_bad_dep(k).parent), "--out", k.s(b(b"out\xfe")), "--jobs", "1", "--json"])
_name("render", lambda k: ["render", str(_bad_dep(k)), "--messages", str(k.write(b(b"m\xff.json"), MESSAGES))], needle="Hi")
_name("render_archive", lambda k: ["render", str(k.archive(name=b(b"a\xff.etm"))), "--messages", str(k.write("m.json", MESSAGES))],
      needle="Hi")


# --- lie: archives whose metadata.json lies ---------------------------------------------------------
# A good archive (with_ptd: program, tokenizer.model, weights/weights.ptd) whose metadata is
# rewritten, the zip rebuilt with true CRCs (tests/test_archive_lies.py's rewrite): only the
# metadata's cross-references are wrong. Opening refuses it: exit 3 from every command.

Meta = dict[str, Any]
Members = dict[str, bytes]


def _lying(k: Kit, lie: Callable[[Meta, Members], None], name: str = "m.etm") -> Path:
    from test_archive_lies import rewrite

    return rewrite(k.archive(name="good/good.etm"), k / name, lie)


def _member(meta: Meta, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in meta["members"] if m["name"] == name)
    return found


def _set(path: str, value: Any) -> Callable[[Meta, Members], None]:
    """A lie that sets ``meta[a][b]...`` (``path`` "a.b") to ``value``."""

    def lie(meta: Meta, _: Members) -> None:
        *parents, last = path.split(".")
        target: Any = meta
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[last] = value

    return lie


def _add_zip_member(name: str, data: bytes, role: str | None) -> Callable[[Meta, Members], None]:
    def lie(meta: Meta, members: Members) -> None:
        members[name] = data
        if role is not None:
            meta["members"].append({"name": name, "size": len(data), "sha256": sha256(data), "role": role})

    return lie


def _ghost_member(meta: Meta, _: Members) -> None:
    meta["members"].append({"name": "weights/ghost.ptd", "size": 1, "sha256": "0" * 64, "role": "weights"})


def _listed_twice(meta: Meta, _: Members) -> None:
    meta["members"].append(dict(meta["members"][1]))


def _size_lie(meta: Meta, _: Members) -> None:
    _member(meta, "tokenizer.model")["size"] += 1


def _sha_lie(meta: Meta, _: Members) -> None:
    _member(meta, "tokenizer.model")["sha256"] = "f" * 64


def _role_lie(meta: Meta, _: Members) -> None:
    _member(meta, "tokenizer.model")["role"] = "program"


def _weights_unlisted(meta: Meta, _: Members) -> None:
    meta["weights"] = []


def _weights_keys_lie(meta: Meta, _: Members) -> None:
    meta["weights"][0]["keys"] = ["not.a.key"]


def _programs_v2(data: list[str], role: str = "model") -> Callable[[Meta, Members], None]:
    def lie(meta: Meta, _: Members) -> None:
        meta["format_version"] = meta["min_reader_version"] = 2
        meta["weights"][0]["role"] = "weights"
        meta["programs"] = [{"name": "model", "member": "model.pte", "role": role, "data": data}]

    return lie


LIES: dict[str, Callable[[Meta, Members], None]] = {
    "member_listed_but_absent": _ghost_member,
    "member_present_but_unlisted": _add_zip_member("tokenizer_config.json", b"{}", None),
    "member_listed_twice": _listed_twice,
    "member_size": _size_lie,
    "member_size_negative": _set("members.1.size", -1),
    "member_role_swapped": _role_lie,
    "member_role_unknown": _set("members.1.role", "x-evil"),
    "member_sha256_malformed": _set("members.1.sha256", "Z" * 64),
    "tokenizer_member_absent": _set("tokenizer.member", "tokenizer.json"),
    "tokenizer_member_is_the_program": _set("tokenizer.member", "model.pte"),
    "tokenizer_member_is_the_weights": _set("tokenizer.member", "weights/weights.ptd"),
    "tokenizer_member_traverses": _set("tokenizer.member", "../tokenizer.model"),
    "two_tokenizers": _add_zip_member("tokenizer.bin", b"\0" * 64, "tokenizer"),
    "tokenizer_format": _set("tokenizer.format", "hf_json"),
    "weights_entry_absent": _set("weights.0.member", "weights/ghost.ptd"),
    "weights_entry_is_the_program": _set("weights.0.member", "model.pte"),
    "weights_member_without_entry": _weights_unlisted,
    "format_not_etm": _set("format", "zip"),
    "format_version_3": lambda m, _: m.update(format_version=3, min_reader_version=3),
    "format_version_a_string": _set("format_version", "1"),
    "format_version_true": _set("format_version", True),
    "format_version_zero": _set("format_version", 0),
    "min_reader_above_format": _set("min_reader_version", 2),
    "version_1_with_programs": lambda m, _: m.update(programs=[{"name": "model", "member": "model.pte", "role": "model", "data": []}]),
    "program_data_absent": _programs_v2(["weights/ghost.ptd"]),
    "program_data_twice": _programs_v2(["weights/weights.ptd", "weights/weights.ptd"]),
    "program_role_misspelt": _programs_v2(["weights/weights.ptd"], role="modle"),
    "program_snapshot_misshapen": _set("program.methods", "forward"),
    "stop_ids_misshapen": _set("generation.stop_token_ids", [[2]]),
    "num_bos_negative": _set("generation.num_bos", -1),
}  # fmt: skip
for _name, _lie in LIES.items():
    CASES.append(Case(f"verify_{_name}", "lie", lambda k, lie=_lie: ["verify", str(_lying(k, lie))], 3))

# The tokenizer lies of issue 15 through every command that opens an archive.
for _name in ("tokenizer_member_absent", "tokenizer_member_is_the_program", "two_tokenizers", "member_size"):
    for _argv, _extra in ((["unpack"], ["-o", "{root}/u"]), (["inspect"], []), (["diagnose"], []),
                          (["render"], ["--messages", "{root}/m.json"]), (["pack"], ["-o", "{root}/a.etm"])):

        def _through(k: Kit, lie: Callable[[Meta, Members], None] = LIES[_name], argv: list[str] = _argv,
                     extra: list[str] = _extra) -> list[str]:  # fmt: skip
            k.write("m.json", MESSAGES)
            return [*argv, str(_lying(k, lie)), *(a.format(root=k.root) for a in extra)]

        CASES.append(Case(f"{_argv[0]}_{_name}", "lie", _through, 3))

# A well-formed sha256 that is wrong: the archive opens; verify names the member (exit 1),
# extraction refuses it (exit 3).
CASES.append(Case("verify_member_sha256_wrong", "lie", lambda k: ["verify", str(_lying(k, _sha_lie))], 1,
                  needle="tokenizer.model"))  # fmt: skip
CASES.append(Case("unpack_member_sha256_wrong", "lie", lambda k: ["unpack", str(_lying(k, _sha_lie)), "-o", k.s("u")], 3,
                  outputs=("u",), needle="sha256"))  # the empty target folder may stay  # fmt: skip

# Snapshots that lie (the program's constant methods, the weights' keys): the archive opens;
# diagnose reads the archived files and names the lie (exit 1).
SNAPSHOT_LIES: dict[str, Callable[[Meta, Members], None]] = {
    "weights_keys_wrong": _weights_keys_lie,
    "program_constants_wrong": _set("program.constant_methods.get_max_seq_len", 4096),
}
VERIFY_SNAPSHOTS = ""  # fixed: verify reads the members metadata.json describes
for _name, _lie in SNAPSHOT_LIES.items():
    CASES.append(Case(f"diagnose_{_name}", "lie", lambda k, lie=_lie: ["diagnose", str(_lying(k, lie)), "--json"], 1,
                      needle="metadata-snapshot-mismatch"))  # fmt: skip
    CASES.append(Case(f"verify_{_name}", "lie", lambda k, lie=_lie: ["verify", str(_lying(k, lie))], 1,
                      bug=VERIFY_SNAPSHOTS))  # fmt: skip
CASES.append(Case("render_hostile_chat_template", "lie", lambda k: [
    "render", str(_lying(k, _set("chat_template", _HOSTILE_TEMPLATE))), "--messages", str(k.write("m.json", MESSAGES))],
    3, subprocess=True, timeout=TEMPLATE_GUARD))  # fmt: skip


def _raw_metadata(k: Kit, raw: bytes) -> list[str]:
    """The good archive with metadata.json replaced by ``raw`` bytes (the zip rebuilt)."""
    from test_archive_hostile import raw_zip
    from test_archive_lies import read_back

    _, members = read_back(k.archive(name="good/good.etm"))
    entries = [{"name": "metadata.json", "data": raw}, *({"name": n, "data": d} for n, d in members.items())]
    path = k.write("m.etm", raw_zip(entries))
    return ["verify", str(path)]


def _metadata_text(k: Kit) -> str:
    from test_archive_lies import read_back

    return json.dumps(read_back(k.archive(name="good/good.etm"))[0])


for _name, _raw in {
    "deep": lambda k: with_key(_metadata_text(k), "x", DEEP),
    "huge_int": lambda k: with_key(_metadata_text(k), "x", HUGE_INT),
    "nan": lambda k: with_key(_metadata_text(k), "x", "NaN"),
    "overflowing_float": lambda k: with_key(_metadata_text(k), "x", "1e400"),
    "duplicate_key": lambda k: with_key(_metadata_text(k), "format", '"etm"'),
    "lone_surrogate": lambda k: with_key(_metadata_text(k), "x", '"\\udc80"'),
    "not_utf8": lambda k: with_key(_metadata_text(k), "x", '"\udcff"'),
    "bom": lambda k: "\ufeff" + _metadata_text(k),
    "not_an_object": lambda k: "[" + _metadata_text(k) + "]",
    "over_4_mib": lambda k: with_key(_metadata_text(k), "x", '"' + " " * (5 << 20) + '"'),
}.items():
    CASES.append(Case(f"metadata_{_name}", "json",
                      lambda k, r=_raw: _raw_metadata(k, r(k).encode("utf-8", "surrogateescape")), 3))  # fmt: skip


# --- special: FIFOs, sockets, devices and symlink loops where a file is expected ---------------------


def _special(case: str, exit: int, build: Callable[[Kit], Sequence[str] | Run], needle: str = "", **kw: Any) -> None:
    CASES.append(Case(case, "special", build, exit, needle=needle, **kw))


for _name, _make in {
    "fifo_pte": lambda k: k.fifo("x.pte"),
    "fifo_etm": lambda k: k.fifo("x.etm"),
    "fifo_ptd": lambda k: k.fifo("x.ptd"),
    "fifo_tokenizer": lambda k: k.fifo("tokenizer.model"),
    "socket_pte": lambda k: k.socket("x.pte"),
    "dev_zero_pte": lambda k: _link(k, "x.pte", "/dev/zero"),
    "dev_null_etm": lambda k: _link(k, "x.etm", "/dev/null"),
    "dev_urandom_tokenizer": lambda k: _link(k, "tokenizer.json", "/dev/urandom"),
    "symlink_loop_pte": lambda k: _link(k, "x.pte", k / "x.pte"),
}.items():
    _special(f"inspect_{_name}", 3, lambda k, m=_make: ["inspect", str(m(k))])
_special("verify_fifo_archive", 3, lambda k: ["verify", str(k.fifo("x.etm"))], "not a regular file")
_special("unpack_fifo_archive", 3, lambda k: ["unpack", str(k.fifo("x.etm")), "-o", k.s("u")], "not a regular file")
_special("render_fifo_archive", 3, lambda k: ["render", str(k.fifo("x.etm")), "--messages", str(k.write("m.json", MESSAGES))])
for _name, _make in {
    "fifo_without_writer": lambda k: k.fifo("m.json"),
    "dev_zero": lambda k: _link(k, "m.json", "/dev/zero"),
    "dev_urandom": lambda k: _link(k, "m.json", "/dev/urandom"),
    "a_folder": lambda k: (k / "m.json").mkdir() or k / "m.json",
    "a_socket": lambda k: k.socket("m.sock"),
    "symlink_loop": lambda k: _link(k, "m.json", k / "m.json"),
}.items():
    _special(f"render_messages_{_name}", 3, lambda k, m=_make: ["render", str(k.dep()), "--messages", str(m(k))])
for _flag, _name, _make in (
    ("--tokenizer", "fifo", lambda k: k.fifo("t.model")),
    ("--tokenizer", "dev_zero", lambda k: _link(k, "t.model", "/dev/zero")),
    ("--ptd", "fifo", lambda k: k.fifo("w.ptd")),
    ("--ptd", "dev_zero", lambda k: _link(k, "w.ptd", "/dev/zero")),
    ("--chat-template", "fifo_without_writer", lambda k: k.fifo("t.jinja")),
    ("--chat-template", "dev_urandom", lambda k: _link(k, "t.jinja", "/dev/urandom")),
):
    _special(f"pack_{_flag.strip('-').replace('-', '_')}_{_name}", 3,
             lambda k, f=_flag, m=_make: ["pack", str(k.dep()), f, str(m(k)), "-o", k.s("a.etm")])  # fmt: skip


def _dep_with(k: Kit, src: str, name: str, make: Callable[[Path], object]) -> Path:
    """A copy of ``src`` whose file ``name`` is replaced by what ``make(path)`` puts there."""
    dep = k.dep(src)
    (dep / name).unlink(missing_ok=True)
    make(dep / name)
    return dep


_special("pack_folder_program_a_fifo", 3, lambda k: ["pack", str(_dep_with(k, "with_ptd", "program.pte", os.mkfifo)), "-o", k.s("a.etm")])
_special("pack_folder_tokenizer_a_fifo", 3, lambda k: ["pack", str(_dep_with(k, "with_ptd", "tokenizer.model", os.mkfifo)), "-o", k.s("a.etm")])
_special("pack_folder_weights_dev_zero", 0, lambda k: ["pack", str(_dep_with(k, "with_ptd", "weights.ptd", lambda p: p.symlink_to("/dev/zero"))), "-o", k.s("a.etm")],
         "weights-missing-key", outputs=("a.etm",))  # the program's keys are missing: an error finding
# A config that is not a regular file is no part of the deployment: the scan leaves it out.
_special("diagnose_folder_config_a_fifo", 0, lambda k: ["diagnose", str(_dep_with(k, "hf_style", "config.json", os.mkfifo))])
_special("diagnose_folder_tokenizer_config_dev_zero", 0,
         lambda k: ["diagnose", str(_dep_with(k, "hf_style", "tokenizer_config.json", lambda p: p.symlink_to("/dev/zero")))])
_special("render_folder_tokenizer_config_a_fifo", 0,
         lambda k: ["render", str(_dep_with(k, "hf_style", "tokenizer_config.json", os.mkfifo)), "--messages", str(k.write("m.json", MESSAGES))])
_special("diagnose_folder_export_yaml_a_fifo", 0,  # not a file: no export config (it blocked the scan once)
         lambda k: ["diagnose", str(_dep_with(k, "export_llm", "export_config.yaml", os.mkfifo))], subprocess=True)


@add("upgrade_tree_with_fifos_sockets_and_loops", "special", 0, outputs=("out", "out/*"), needle="1 written")
def _(k: Kit) -> list[str]:
    _tree(k)
    k.fifo("tree/dep/extra.pte")
    k.fifo("tree/junk/model.pte")
    k.socket("tree/dep/s.ptd")
    _link(k, "tree/loop/self", k / "tree" / "loop")
    _link(k, "tree/loop/a.pte", k / "tree" / "loop" / "b.pte")
    _link(k, "tree/loop/b.pte", k / "tree" / "loop" / "a.pte")
    return ["upgrade", k.s("tree"), "--out", k.s("out"), "--jobs", "1"]


# --- truncated: truncated or oversized programs, weights and tokenizers -------------------------------


def _cut(k: Kit, src: str, name: str, keep: Callable[[int], int]) -> Path:
    data = (FIXTURES / src).read_bytes()
    return k.write(name, data[: keep(len(data))])


TRUNCATIONS: dict[str, tuple[str, str]] = {
    "pte": ("programs/constants_all.pte", "m.pte"),
    "ptd": ("programs/ext_weights.ptd", "w.ptd"),
    "sentencepiece": ("tokenizers/sp.model", "tokenizer.model"),
    "tiktoken": ("tokenizers/tiktoken.model", "tokenizer.model"),
    "llama2c": ("tokenizers/tokenizer.bin", "tokenizer.bin"),
    "hf_json": ("tokenizers/hf_bpe/tokenizer.json", "tokenizer.json"),
}
for _kind, (_src, _file) in TRUNCATIONS.items():
    for _where, _keep in (("empty", lambda n: 0), ("at_8_bytes", lambda n: 8), ("at_half", lambda n: n // 2)):
        if _kind == "tiktoken" and _where == "at_half":
            continue  # half a rank file is a smaller rank file, if the cut falls on a line end
        CASES.append(Case(f"inspect_{_kind}_{_where}", "truncated",
                          lambda k, s=_src, f=_file, c=_keep: ["inspect", str(_cut(k, s, f, c))], 3))  # fmt: skip
CASES.append(Case("inspect_tiktoken_cut_mid_token", "truncated",
                  lambda k: ["inspect", str(k.write("tokenizer.model", b"IQ== 0\nIg== 1\nIw"))], 3))  # fmt: skip


def _dep_cut(k: Kit, name: str) -> Path:
    dep = k.dep()
    data = (dep / name).read_bytes()
    (dep / name).write_bytes(data[: len(data) // 2])
    return dep


CASES += [
    Case("pack_folder_program_truncated", "truncated", lambda k: ["pack", str(_dep_cut(k, "program.pte")), "-o", k.s("a.etm")], 3),
    Case("pack_folder_weights_truncated", "truncated", lambda k: ["pack", str(_dep_cut(k, "weights.ptd")), "-o", k.s("a.etm")], 0,
         outputs=("a.etm",), needle="weights-missing-key"),  # the unreadable .ptd is left out: its keys are missing
    Case("pack_folder_tokenizer_truncated", "truncated", lambda k: ["pack", str(_dep_cut(k, "tokenizer.model")), "-o", k.s("a.etm")], 3),
    Case("diagnose_folder_program_truncated", "truncated", lambda k: ["diagnose", str(_dep_cut(k, "program.pte")), "--json"], 1,
         needle="input-unreadable"),
    Case("upgrade_tree_program_truncated", "truncated", lambda k: ["upgrade", str(_dep_cut(k, "program.pte").parent), "--out", k.s("out"), "--jobs", "1"],
         1, outputs=("out", "out/*")),
    Case("inspect_pte_sparse_4_gib", "truncated", lambda k: ["inspect", str(k.sparse("m.pte", pte_bytes()[:64], 4 << 30))], 3),
    Case("inspect_ptd_sparse_4_gib", "truncated", lambda k: ["inspect", str(k.sparse("w.ptd", pte_bytes("programs/ext_weights.ptd")[:64], 4 << 30))], 3),
    Case("inspect_tokenizer_json_sparse_300_mib", "truncated", lambda k: ["inspect", str(k.sparse("tokenizer.json", b'{"model": {"type": "BPE", "vocab": {"a": 0}}, "x": "', 300 << 20))], 3),
    Case("inspect_sentencepiece_sparse_300_mib", "truncated", lambda k: ["inspect", str(k.sparse("tokenizer.model", (FIXTURES / "tokenizers/sp.model").read_bytes(), 300 << 20))], 3),
    Case("pack_tokenizer_flag_sparse_300_mib", "truncated", lambda k: ["pack", str(k.dep()), "--tokenizer", str(k.sparse("t.json", b'{"model": {"type": "BPE", "vocab": {"a": 0}}, "x": "', 300 << 20)), "-o", k.s("a.etm")], 3),
    Case("pack_chat_template_flag_over_4_mib", "truncated", lambda k: ["pack", str(k.dep()), "--chat-template", str(k.sparse("t.jinja", b"{{ messages }}", 5 << 20)), "-o", k.s("a.etm")], 3),
]  # fmt: skip
for _argv in (["verify"], ["inspect"], ["unpack", "-o", "{root}/u"], ["render", "--messages", "{root}/m.json"], ["diagnose"]):

    def _cut_archive(k: Kit, argv: list[str] = _argv) -> list[str]:
        k.write("m.json", MESSAGES)
        path = k.archive()
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        return [argv[0], str(path), *(a.format(root=k.root) for a in argv[1:])]

    CASES.append(Case(f"{_argv[0]}_archive_truncated", "truncated", _cut_archive, 3))


# --- terminal: hostile file names reaching terminal output ------------------------------------------

HOSTILE_NAMES = {
    "ansi": "\x1b[31mred\x1b[0m\x1b]0;pwned\x07",
    "newline": "a\nfake line\r",
    "rtl_override": "gnp.\u202eexe",
    "c1_csi": "x\x9b2J",
    "zero_width": "tok\u200ben\ufeff",
}
for _name, _hostile in HOSTILE_NAMES.items():
    CASES.append(Case(f"inspect_garbage_named_{_name}", "terminal",
                      lambda k, h=_hostile: ["inspect", str(k.write(f"{h}.pte", b"garbage" * 8))], 3))  # fmt: skip
    CASES.append(Case(f"pack_folder_named_{_name}", "terminal",
                      lambda k, h=_hostile: ["pack", str(k.dep(name=h)), "-o", k.s(f"{h}.etm")], 0,
                      outputs=(glob.escape(f"{_hostile}.etm"),), needle="wrote"))  # fmt: skip
_terminal_names = [
    ("inspect_folder_program_named_ansi", 0, lambda k: ["inspect", str(_renamed(k, "program.pte", "\x1b[2J\x1b[H.pte"))]),
    ("diagnose_folder_program_named_rtl", 0, lambda k: ["diagnose", str(_renamed(k, "program.pte", "evil\u202eetp.pte"))]),
    ("upgrade_tree_folder_named_ansi", 0, lambda k: ["upgrade", str(_renamed(k, None, "\x1b[31mdep\x07").parent), "--out", k.s("out"), "--jobs", "1"]),
    ("verify_archive_named_bell", 0, lambda k: ["verify", str(k.archive(name="\x07bell\x1b[5m.etm"))]),
    ("unpack_archive_named_rtl", 0, lambda k: ["unpack", str(k.archive(name="x\u202eetm.etm")), "-o", k.s("u\x1b[1m")]),
    ("pack_folder_named_rtl_json", 0, lambda k: ["pack", str(_renamed(k, None, "dep\u202e")), "-o", k.s("a.etm"), "--json"]),
    ("render_messages_named_ansi_bad_json", 3, lambda k: ["render", str(k.dep()), "--messages", str(k.write("\x1b[31m.json", b"{"))]),
]
for _name, _exit, _build in _terminal_names:
    CASES.append(Case(_name, "terminal", _build, _exit,
                      outputs=("out", "out/*", "a.etm", glob.escape("u\x1b[1m"), glob.escape("u\x1b[1m") + "/*")))

CASES.append(Case(
    "inspect_folder_program_named_rtl_json", "terminal",
    lambda k: ["inspect", str(_renamed(k, "program.pte", "evil\u202eetp.pte")), "--json"], 0,
))  # fmt: skip


def _renamed(k: Kit, member: str | None, new: str) -> Path:
    """A with_ptd copy in ``tree/``; ``member`` renamed to ``new`` (``None``: the folder itself)."""
    (k / "tree").mkdir()
    dep = k.dep("with_ptd", "tree/dep")
    if member is None:
        return dep.rename(dep.parent / new)
    (dep / member).rename(dep / new)
    return dep


@add("inspect_archive_metadata_with_escapes", "terminal", 0)
def _(k: Kit) -> list[str]:
    def lie(meta: Meta, _: Members) -> None:
        meta["tokenizer"]["bos_token"] = "\x1b]0;pwned\x07"
        meta["family"]["evidence"][0]["detail"] = "\x1b[2J\u202e"
        meta["diagnostics"] = [{"code": "x\x1b[31m", "severity": "info", "message": "\x1b[5mblink\n", "hint": None, "paths": ["\x07"]}]

    return ["inspect", str(_lying(k, lie))]


# --- native: a tokenizer that kills the runner's native loader -----------------------------------


def _crashing_dep(k: Kit, where: str = "dep") -> Path:
    """hf_style whose tokenizer.json splits on a regex nested 495,000 deep: RE2 refuses the
    lookahead, PCRE2 the nesting, and std::regex overflows its stack compiling it (SIGSEGV), as
    in tests/test_isolation.py (not imported from there: it loads pytorch_tokenizers here)."""
    dep = k.dep("hf_style", where)
    doc = json.loads((dep / "tokenizer.json").read_text())
    depth = 495_000
    split = {"type": "Split", "pattern": {"Regex": "(?=a)" + "(" * depth + "a" + ")" * depth},
             "behavior": "Isolated", "invert": False}  # fmt: skip
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, doc["pre_tokenizer"]]}
    (dep / "tokenizer.json").write_text(json.dumps(doc))
    return dep


for _name, _exit, _build, _outputs, _needle in (
    ("inspect", 0, lambda k: ["inspect", str(_crashing_dep(k))], (), "crash"),
    ("diagnose", 1, lambda k: ["diagnose", str(_crashing_dep(k)), "--json"], (), "tokenizer-not-loadable"),
    ("pack", 0, lambda k: ["pack", str(_crashing_dep(k)), "-o", k.s("a.etm")], ("a.etm",), "crash"),
    ("render", 0, lambda k: ["render", str(_crashing_dep(k)), "--messages", str(k.write("m.json", MESSAGES))], (), "Hi"),
    ("upgrade", 0, lambda k: ["upgrade", str(_crashing_dep(k, "tree/dep").parent), "--out", k.s("out"), "--jobs", "1"],
     ("out", "out/*"), "1 written"),
):  # fmt: skip
    CASES.append(Case(f"{_name}_crashing_tokenizer", "native", _build, _exit, _outputs, _needle, subprocess=True))
