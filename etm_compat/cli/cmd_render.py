"""``etm-compat render PATH``: a conversation formatted with the deployment's chat template."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from etm_compat.cli.common import adapters, emit_json, read_text
from etm_compat.cli.exit_codes import EXIT_OK
from etm_compat.compat.loader import load
from etm_compat.errors import UsageError
from etm_compat.prompt.messages import load_messages, load_objects, parse_var


def render_inputs(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The conversation and the template options ``render`` was given, read and checked."""
    given = {"--messages": args.messages, "--tools": args.tools, "--documents": args.documents}
    readers = [option for option, path in given.items() if path == "-"]
    if len(readers) > 1:
        raise UsageError(f"only one of {' and '.join(readers)} can read stdin (-)")
    if args.user is not None:
        messages = [{"role": "user", "content": args.user}]
    else:
        messages = load_messages(read_text(args.messages, "messages file"), path=args.messages)
    options: dict[str, Any] = dict(parse_var(spec) for spec in args.var or ())
    for name, path in (("tools", args.tools), ("documents", args.documents)):
        if path is not None:
            options[name] = load_objects(read_text(path, f"{name} file"), what=name, path=path)
    if args.continue_final_message:
        options["continue_final_message"] = True
    options["add_generation_prompt"] = not (args.no_generation_prompt or args.continue_final_message)
    return messages, options


def run(args: argparse.Namespace) -> int:
    messages, options = render_inputs(args)
    with load(args.path, adapters=adapters()) as bundle:
        if args.tokens:
            tokens = bundle.render_tokens(
                messages, family=args.family, num_bos=args.num_bos, num_eos=args.num_eos, **options
            ).to_json()
            if args.json:
                emit_json(tokens)
            else:
                # Lazy: rich is for terminals; --json output never loads it.
                from etm_compat.cli.console import console, render_tokens

                render_tokens(console(), tokens)
            return EXIT_OK
        prompt = bundle.render(messages, family=args.family, **options)
    if args.json:
        emit_json({"prompt": prompt})
    else:
        sys.stdout.write(prompt)
        if not prompt.endswith("\n"):
            sys.stdout.write("\n")
    return EXIT_OK


__all__ = ["render_inputs", "run"]
