"""``python -m reasonrec.llm.llamacpp_server``: llama-cpp-python's OpenAI-compatible server, loading its model with
the llama.cpp backend's model params.

``python -m llama_cpp.server`` has no setting for ``use_extra_bufts`` (llama-cpp-python 0.3.36: neither a flag nor a
field of its config file), and on a CPU with AMX it serves the bundled model until the first completion, which
segfaults it (issue 12). This entry point takes every flag of that server, plus

- ``--extra_buffers auto|on|off``: :attr:`~reasonrec.llm.llamacpp.LlamaCppOptions.extra_buffers`, with the same
  rule (:func:`~reasonrec.llm.llamacpp.use_extra_buffers`: ``auto`` = off on a CPU with AMX);
- ``--model smollm2-135m``: the bundled GGUF, as everywhere else in reasonrec.

    python -m reasonrec.llm.llamacpp_server --model smollm2-135m --host 127.0.0.1 --port 8000

and then ``load_llm("http://127.0.0.1:8000/v1", tokenizer="smollm2-135m")``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import bundled
from .llamacpp import amx_present, model_params, use_extra_buffers

PROG = "python -m reasonrec.llm.llamacpp_server"


def _resolve_model(args: list[str]) -> list[str]:
    """``--model smollm2-135m`` (or ``--model=smollm2-135m``) → the bundled GGUF's path."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--model" and i + 1 < len(out) and out[i + 1] == bundled.SMOLLM2:
            out[i + 1] = str(bundled.smollm2_gguf())
        elif arg == f"--model={bundled.SMOLLM2}":
            out[i] = f"--model={bundled.smollm2_gguf()}"
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, add_help=False)
    parser.add_argument("--extra_buffers", choices=["auto", "on", "off"], default="auto")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if "-h" in rest or "--help" in rest:
        print(f"{PROG}: the flags of python -m llama_cpp.server (below), plus\n  --extra_buffers {{auto,on,off}}  "
              "llama.cpp's extra CPU buffer types (use_extra_bufts); auto (default) = off on a CPU with AMX\n"
              f"and --model {bundled.SMOLLM2} for the bundled GGUF.\n")
    try:
        from llama_cpp.server.__main__ import main as serve
    except ImportError as err:
        raise SystemExit(f"{PROG} needs llama-cpp-python's server extra ({err}); "
                         "pip install 'reasonrec[llamacpp]'") from None
    extra = use_extra_buffers(args.extra_buffers)
    if not ("-h" in rest or "--help" in rest):
        # Said on stderr, the server's log, so a crash report shows which path the model was loaded with.
        print(f"reasonrec: loading with use_extra_bufts={extra} (--extra_buffers {args.extra_buffers}; AMX "
              f"{'present' if amx_present() else 'absent'})", file=sys.stderr, flush=True)
    sys.argv = [PROG, *_resolve_model(rest)]
    # For the server's whole life: it loads its model at start, and again when a request names another one.
    with model_params(use_extra_bufts=extra):
        serve()


if __name__ == "__main__":
    main()
