"""The diagnose checks on the program itself and its weights: constant methods the runner
requires, external keys against the .ptd files, and backends the installed runtime lacks.

Each reads one :class:`~etm_compat.checks.subject.Subject` and returns findings. Codes are
listed in docs/DIAGNOSTICS.md.
"""

from __future__ import annotations

from etm_compat.checks.subject import Subject, as_int, finding
from etm_compat.findings import Finding
from etm_compat.formats.dialects import read_dialects
from etm_compat.infer.runner import runner_truth

# --- program ----------------------------------------------------------------------------------


def check_program(s: Subject) -> list[Finding]:
    """Constant methods the ExecuTorch LLM runner requires, compares, or ignores."""
    cm = s.constant_methods
    out: list[Finding] = []
    seq = as_int(cm.get("get_max_seq_len"))
    if "get_max_seq_len" not in cm:
        out.append(
            finding(
                "max-seq-len-missing",
                "error",
                f"{s.program_label} has no get_max_seq_len constant method; the ExecuTorch LLM "
                'runner refuses such a program ("Required metadata method get_max_seq_len not found")',
                "re-export with constant_methods={'get_max_seq_len': N} (export_llm writes it)",
                s.program_label,
            )
        )
    ctx = as_int(cm.get("get_max_context_len"))
    if seq is not None and ctx is not None and ctx < seq:
        out.append(
            finding(
                "context-shorter-than-seq",
                "error",
                f"{s.program_label}: get_max_context_len={ctx} is smaller than "
                f"get_max_seq_len={seq}; a full-length prefill would overrun the KV cache",
                "re-export with max_context_length >= max_seq_length",
                s.program_label,
            )
        )
    return out + check_ignored_keys(s)


def check_ignored_keys(s: Subject) -> list[Finding]:
    """Dialect keys that carry a runner setting the 1.x runner never reads (``get_max_ctx_len``,
    ``get_use_kv_cache``, ``get_n_bos``...), where what it uses instead differs or comes from
    elsewhere. A singular ``get_eos_id`` is :func:`~etm_compat.checks.tokens.check_eos`'s."""
    view = read_dialects(s.constant_methods)
    truth = runner_truth(s.constant_methods, s.tokenizer).values
    notes: list[str] = []
    for k in view.keys:
        if k.runner != "ignored" or k.stands_for is None or k.key == "get_eos_id":
            continue
        if k.stands_for.startswith("GenerationConfig.") or k.field not in truth:
            if k.value:  # get_n_bos=0, append_eos_to_prompt=False: nothing is lost
                notes.append(f"{k.key}={k.raw!r} (it adds {k.stands_for} tokens, default 0)")
            continue
        if k.value is None:
            continue
        used = truth[k.field]
        if k.stands_for in s.constant_methods and used.value == k.value:
            continue  # the key the runner reads says the same
        source = {"default": "its default", "missing": "nowhere"}.get(used.source, used.source)
        notes.append(f"{k.key}={k.value!r} (it uses {k.field}={used.value!r} from {source})")
    if not notes:
        return []
    return [
        finding(
            "runner-ignores-key",
            "info",
            f"{s.program_label} sets {'; '.join(notes)}: keys the ExecuTorch 1.x LLM runner "
            "never reads",
            "re-export with the keys the runner reads (get_max_context_len, use_kv_cache, "
            "get_eos_ids) and pass num_bos/num_eos in GenerationConfig (the archive records "
            "them under generation)",
            s.program_label,
        )
    ]


def check_weights(s: Subject) -> list[Finding]:
    """External keys against the .ptd files: missing, duplicated, unused."""
    out: list[Finding] = []
    providers: dict[str, list[str]] = {}
    for label, keys in s.weights:
        for key in keys:
            providers.setdefault(key, []).append(label)
    missing = [k for k in s.external_keys if k not in providers]
    if missing:
        shown = ", ".join(repr(k) for k in missing[:8]) + (" ..." if len(missing) > 8 else "")
        out.append(
            finding(
                "weights-missing-key",
                "error",
                f"{s.program_label} needs {len(missing)} external tensor(s) no .ptd provides: {shown}",
                "ship the .ptd written with the program (write_tensor_data_to_file), or pass --ptd",
                s.program_label,
            )
        )
    shared: dict[tuple[str, ...], list[str]] = {}
    for key, labels in sorted(providers.items()):
        if len(labels) > 1:
            shared.setdefault(tuple(labels), []).append(key)
    for files, dup_keys in shared.items():
        out.append(
            finding(
                "weights-duplicate-key",
                "error",
                f"{', '.join(files)} all provide {len(dup_keys)} key(s): "
                + ", ".join(repr(k) for k in dup_keys[:8]),
                "keep one .ptd per key; the runtime refuses duplicate keys in merged data maps",
                *files,
            )
        )
    # Delegate-owned keys (XNNPACK...) are not listed in the program head: cannot judge use.
    if not s.backends:
        used = set(s.external_keys)
        for label, keys in s.weights:
            unused = sorted(keys - used)
            if unused:
                out.append(
                    finding(
                        "weights-unused-key",
                        "warning",
                        f"{label} provides {len(unused)} key(s) {s.program_label} never uses: "
                        + ", ".join(repr(k) for k in unused[:8]),
                        "check the .ptd belongs to this program; unused data only costs space",
                        label,
                        s.program_label,
                    )
                )
    return out


def check_backends(s: Subject, registered: frozenset[str] | None) -> list[Finding]:
    """Backends the program delegates to that the installed runtime does not register."""
    if registered is None:
        return []
    return [
        finding(
            "backend-not-registered",
            "info",
            f"{s.program_label} delegates to {name}, which the installed ExecuTorch runtime "
            f"does not register (it has: {', '.join(sorted(registered)) or 'none'})",
            "run it with a runtime built with that backend (the device's may differ from this one)",
            s.program_label,
        )
        for name in s.backends
        if name not in registered
    ]


__all__ = ["check_backends", "check_ignored_keys", "check_program", "check_weights"]
