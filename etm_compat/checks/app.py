"""Demo-app checks (``diagnose --app``): does the app recognise the program, and format prompts
the way the model's own chat template does?

The apps (:mod:`etm_compat.prompt.apps`) pick a model type from the program's file name and
format prompts with built-in strings. These checks say which type the app would pick, and
compare the app's rendering of the standard system + user conversation (with the generation
prompt) with the model's chat template rendered over the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from etm_compat.checks.subject import SubjectKind, finding
from etm_compat.errors import EtmError
from etm_compat.findings import Finding, Severity
from etm_compat.prompt.apps import (
    AppModelType,
    DemoApp,
    app_file_names,
    app_model_type,
    app_type_for_family,
    get_app,
    render_app_prompt,
)
from etm_compat.prompt.chat import STANDARD_CONVERSATIONS, render_chat

#: The conversation both sides render: a system prompt and one user message.
CONVERSATION: Final = "system_user"
_CONTEXT: Final = 24  # characters shown on each side of the first difference


@dataclass(frozen=True)
class AppTarget:
    """What the app checks read about one deployment or archive.

    ``program_name`` is the file name the app is given (for an archive, the one ``unpack``
    writes); ``stem`` is what a suggested name is built from (the program's, or for an archive
    the archive's, as ``unpack --for`` does); ``template`` and the bos/eos strings are the model's own prompt format as
    etm-compat resolved it (inference for a deployment, metadata.json for an archive).
    """

    kind: SubjectKind
    program_name: str
    program_label: str
    stem: str
    family_id: str | None
    template: str | None
    template_label: str
    bos_token: str | None
    eos_token: str | None


def first_difference(a: str, b: str) -> int | None:
    """The index of the first character where ``a`` and ``b`` differ; None when equal."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _excerpt(text: str, at: int) -> str:
    start = max(0, at - _CONTEXT)
    cut = text[start : at + _CONTEXT]
    return ("…" if start else "") + repr(cut) + ("…" if at + _CONTEXT < len(text) else "")


def _unrecognised(app: DemoApp, t: AppTarget, wanted: AppModelType | None) -> Finding:
    rule = "; ".join(
        f"{k.id}: {k.match_kind} {' / '.join(repr(p) for p in k.patterns)}" for k in app.types.values()
    )
    if app.on_unrecognised == "exit":
        outcome = "exits (exit(1)) when this program is selected"
        severity: Severity = "error" if t.kind == "deployment" else "warning"
    else:
        outcome = f"keeps the model type chosen before ({app.fallback_type} on a fresh install)"
        severity = "warning"
    message = (
        f"the {app.display_name} app recognises no model type in the file name {t.program_name!r} "
        f"and {outcome}; it matches the lower-cased file name ({rule})"
    )
    if wanted is None:
        hint = f"the app has no model type for family {t.family_id or 'unknown'!r}"
    else:
        name = app_file_names(
            app.id, t.family_id, stem=t.stem, program_member=t.program_name, tokenizer_member=None
        )[t.program_name]
        hint = f"rename the program so the app picks {wanted.id}, e.g. {name!r}"
        if t.kind == "archive":
            hint = f"unpack with --for {app.id}: it writes {name!r}, which the app takes as {wanted.id}"
    return finding("app-model-unrecognised", severity, message, hint, t.program_label)


def _picked(app: DemoApp, t: AppTarget, picked: AppModelType, wanted: AppModelType | None) -> Finding:
    rule = f"{picked.match_kind} {' / '.join(repr(p) for p in picked.patterns)}"
    stops = ", ".join(repr(s) for s in picked.stop_tokens) or "no stop token of its own"
    limit = f"seq_len {picked.seq_len}" if picked.seq_len else "its own length limit"
    message = (
        f"the {app.display_name} app picks model type {picked.id} from the file name "
        f"{t.program_name!r} ({rule}); it stops at {stops} and runs with {limit}"
    )
    if wanted is None or wanted is picked:
        return finding("app-model-type", "info", message, "none needed", t.program_label)
    return finding(
        "app-model-type",
        "warning",
        f"{message}, but the model's family {t.family_id} is served by type {wanted.id}",
        f"rename the program so the app picks {wanted.id}",
        t.program_label,
    )


def _model_rendering(t: AppTarget) -> str | None:
    if t.template is None:
        return None
    try:
        return render_chat(
            t.template,
            STANDARD_CONVERSATIONS[CONVERSATION],
            add_generation_prompt=True,
            bos_token=t.bos_token or "",
            eos_token=t.eos_token or "",
        )
    except (EtmError, ValueError, TypeError):
        return None  # template-render-failed reports it


def check_app(app_id: str, t: AppTarget) -> list[Finding]:
    """The app's view of one deployment or archive: ``app-model-type`` (the type the file name
    selects), or ``app-model-unrecognised`` when it selects none, and ``app-prompt-differs``
    when the app formats the standard conversation differently from the model's chat template.

    The type compared is the one the app picks; when it picks none, Android's fallback type
    (what it would use) or, for iOS, which exits, the family's type once the file is renamed.
    """
    app = get_app(app_id)
    picked = app_model_type(app_id, t.program_name)
    wanted = app_type_for_family(app_id, t.family_id)
    out: list[Finding] = []
    if picked is None:
        out.append(_unrecognised(app, t, wanted))
        kind = app.types[app.fallback_type] if app.fallback_type else wanted
        why = "its fallback for an unrecognised name" if app.fallback_type else "once the program is renamed"
    else:
        out.append(_picked(app, t, picked, wanted))
        kind, why = picked, f"picked from the file name {t.program_name!r}"
    model = _model_rendering(t)
    if kind is None or model is None:
        return out
    rendering = render_app_prompt(app_id, kind.id, STANDARD_CONVERSATIONS[CONVERSATION])
    at = first_difference(rendering.text, model)
    if at is None:
        return out
    notes = f" ({'; '.join(rendering.notes)})" if rendering.notes else ""
    message = (
        f"the {app.display_name} app (model type {kind.id}, {why}) formats the standard system + "
        f"user conversation differently from the model's chat template ({t.template_label}){notes}; "
        f"first difference at character {at}: app {_excerpt(rendering.text, at)} vs template "
        f"{_excerpt(model, at)}. App: {rendering.text!r}. Template: {model!r}"
    )
    strings = kind.source.paths[0].rsplit("/", 1)[-1]
    hint = (
        f"change the app's {kind.id} strings ({strings} @ {kind.source.commit[:7]}) to the "
        "model's template, or have the app render prompts with the chat template "
        "(etm-compat render, Bundle.render)"
    )
    if wanted is not None and wanted is not kind:
        hint = f"rename the program so the app picks {wanted.id}; if the formats still differ, {hint}"
    out.append(finding("app-prompt-differs", "warning", message, hint, t.program_label, t.template_label))
    return out


__all__ = ["CONVERSATION", "AppTarget", "check_app", "first_difference"]
