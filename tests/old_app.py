"""An "old application", written only against the loose multi-file layout (never edit it for etm).

It takes a deployment folder and uses ``FOLDER/model.pte`` and ``FOLDER/tokenizer.model`` by
path, the way ExecuTorch apps were written before archives: the LLM runner generates greedily,
and the runtime loads the program and runs its constant methods. It knows nothing about
etm-compat. tests/test_shim.py runs it on a legacy folder, then on the same folder after it was
upgraded to ``model.etm``, with ``etm_compat.shim.install()`` run before it as the only change.

Usage: python tests/old_app.py FOLDER   (prints one line: OLD_APP_RESULT <json>)
"""

from __future__ import annotations

import json
import os
import sys


def main(folder: str) -> int:
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
    from executorch.runtime import Runtime

    model = os.path.join(folder, "model.pte")
    tokenizer = os.path.join(folder, "tokenizer.model")

    runner = TextLLMRunner(model, tokenizer)
    pieces: list[str] = []
    config = GenerationConfig(temperature=0.0, max_new_tokens=24, echo=False)
    runner.generate("Once upon a time", config, pieces.append)

    program = Runtime.get().load_program(model)
    constants = {}
    for name in sorted(program.method_names):
        if name != "forward":
            constants[name] = [v if isinstance(v, (int, float, bool)) else str(v)
                               for v in program.load_method(name).execute([])]

    result = {"text": "".join(pieces), "constants": constants}
    sys.stdout.write("OLD_APP_RESULT " + json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
