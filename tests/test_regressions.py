"""Regression tests for crashes the fuzzers found (docs/FUZZING.md lists each finding).

Each test replays the smallest input that escaped as a non-EtmError, through the public API.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import FIXTURES, peak_allocation

from etm_compat.archive.metadata import new_metadata, parse_metadata, serialize_metadata
from etm_compat.cli.main import main
from etm_compat.errors import (
    MetadataError,
    OutputError,
    TemplateError,
    UnreadableError,
    escape_control,
)
from etm_compat.fileio import check_output, read_named_input
from etm_compat.formats.tokenizer.detect import read_tokenizer
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS, render_chat


@pytest.mark.parametrize(
    "template",
    [
        "{% break %}",
        "{% if messages %}{% continue %}{% endif %}",
        "{% macro f() %}{% break %}{% endmacro %}{{ f() }}",
    ],
)
def test_loop_control_outside_a_loop_is_a_template_error(template: str) -> None:
    # Finding 1 (template fuzzer): Jinja's loopcontrols extension emits Python `break` for
    # `{% break %}` anywhere, and Python's compile() raised a bare SyntaxError.
    with pytest.raises(TemplateError, match="does not compile"):
        render_chat(template, STANDARD_CONVERSATIONS["user"])


# Finding 2 (hostile-corpus probe): width/precision taken from a format string allocated the whole
# padded string (1 GB, 5-30 s, up to 3 GB resident) before any size check ran. Each case must be
# refused before Python pads: counted, not timed, as the few MiB Python allocates meanwhile.
@pytest.mark.parametrize(
    "template",
    [
        "{{ '%1000000000s' | format('x') }}",
        "{{ '%(a)1000000000s' | format(a=1) }}",
        "{{ '%s%0*d' | format('a', 1000000000, 1) }}",
        "{{ '%1000000000s' % 'x' }}",
        "{{ '%*s' % (1000000000, 'x') }}",
        "{{ '{:>1000000000}'.format('x') }}",
        "{{ '{:.1000000000f}'.format(1.0) }}",
        "{{ '{0:{1}}'.format('x', 1000000000) }}",
        "{{ '{:>{w}}'.format('x', w=1000000000) }}",
        "{{ '{a:{b}}'.format_map({'a': 'x', 'b': 1000000000}) }}",
        # Finding 3: json.dumps built depth * 10**9 spaces per line before the size check.
        "{{ messages | tojson(indent=1000000000) }}",
        # Finding 4: textwrap re-slices a long word once per line: 900k chars at width 1 ran 20 s.
        "{{ ('x' * 900000) | wordwrap(1) }}",
    ],
)
def test_format_widths_are_refused_before_they_allocate(template: str) -> None:
    with peak_allocation() as peak, pytest.raises(
        TemplateError, match=r"oversized|tojson output|wordwrap"
    ):
        render_chat(template, STANDARD_CONVERSATIONS["user"])
    assert peak[0] < 32 * 1024 * 1024  # the padded strings would be 1 GB (wordwrap: 900k slices)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ '%5s|%d' % ('x', 3) }}", "    x|3"),
        ("{{ 7 % 3 }}", "1"),
        ("{{ '{:>5}|{:.2f}'.format('x', 1.5) }}", "    x|1.50"),
        ("{{ '%-4s|' | format('ab') }}", "ab  |"),
        ("{{ ('ab ' * 3) | wordwrap(4) }}", "ab\nab\nab"),
        ("{{ [1] | tojson(indent=2) }}", "[\n  1\n]"),
    ],
)
def test_ordinary_formatting_still_renders(template: str, expected: str) -> None:
    assert render_chat(template, STANDARD_CONVERSATIONS["user"]) == expected


def _fifo(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


# Finding 5 (hostile corpus): a FIFO given as a tokenizer or to `inspect` blocked open() forever.
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_tokenizer_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path, "tokenizer.model")
    with pytest.raises(UnreadableError, match="not a regular file"):
        read_tokenizer(fifo, check_runner=False)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("how", ["inspect", "pack"])
def test_fifo_through_the_cli_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    fifo = _fifo(tmp_path, "tokenizer.model")
    argv = {
        "inspect": ["inspect", str(fifo)],
        "pack": ["pack", str(FIXTURES / "legacy" / "with_ptd"), "--tokenizer", str(fifo),
                 "-o", str(tmp_path / "m.etm")],
    }[how]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "not a regular file" in err and "Traceback" not in err
    assert not (tmp_path / "m.etm").exists()


# Found by the hostile corpus (tests/test_hostile_corpus.py); each replays the library-level cause.


@pytest.mark.parametrize(
    ("extra", "needle"),
    [('"x": 1e400', "out of range"), ('"x": "\\udc80"', "lone surrogate")],
    ids=["overflowing-number", "lone-surrogate"],
)
def test_metadata_refuses_what_json_loads_lets_through(extra: str, needle: str) -> None:
    # 1e400 parses as infinity (parse_constant only sees NaN/Infinity); "\udc80" as a lone
    # surrogate, which cannot be printed or written as UTF-8.
    raw = serialize_metadata(new_metadata(tool_version="0"))[:-2] + b", " + extra.encode() + b"}\n"
    with pytest.raises(MetadataError, match=needle):
        parse_metadata(raw, name="m")


def test_escape_control_escapes_bidi_invisible_and_undecodable() -> None:
    text = "a\u202egnp.exe\u200b\ufeff" + os.fsdecode(b"\xff") + "\x9b"
    assert escape_control(text) == "a\\u202egnp.exe\\u200b\\ufeff\\udcff\\x9b"
    assert escape_control("modèle 中文 ok") == "modèle 中文 ok"


def test_an_output_under_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(afile / "sub" / "r.md", force=True)
    assert check_output(tmp_path / "new" / "r.md", force=False) == tmp_path / "new" / "r.md"


def test_a_named_input_that_is_a_folder_is_unreadable(tmp_path: Path) -> None:
    # os.fdopen refused the folder with a bare IsADirectoryError (exit 70).
    with pytest.raises(UnreadableError, match="a folder"):
        read_named_input(tmp_path, 1024, what="messages file")
