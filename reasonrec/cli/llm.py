"""`reasonrec llm ...` commands: generate text and score answers with any backend, offline by default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Bundled alias (smollm2-135m, tiny-random), local "
                                       "folder or .gguf, Hugging Face id in the local cache, or http(s):// URL.")]
BackendOpt = Annotated[str, typer.Option(help="auto | transformers | llamacpp | openai | vllm")]
PromptOpt = Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt (repeat for a batch).")]
CacheOpt = Annotated[Path | None, typer.Option(help="SQLite generation cache; reruns are answered from it.")]
OptionOpt = Annotated[list[str] | None, typer.Option("--option", "-o",
                                                        help="Backend option KEY=VALUE (JSON values), e.g. "
                                                             "-o batch_size=8 -o dtype=bfloat16")]


def _options(pairs: list[str] | None) -> dict:
    from ..errors import ConfigError

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--option expects KEY=VALUE; got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _load(model: str, backend: str, cache: Path | None, options: list[str] | None):
    from ..llm.base import load_llm

    return load_llm(model, backend=backend, cache=cache, **_options(options))  # type: ignore[arg-type]


def _constraint(regex: str | None, json_schema: Path | None, choice: list[str] | None):
    from ..errors import ConfigError
    from ..llm.constraints import Choice, JsonSchema, Regex

    given = [name for name, v in (("--regex", regex), ("--json-schema", json_schema), ("--choice", choice)) if v]
    if len(given) > 1:
        raise ConfigError(f"give one constraint; got {' and '.join(given)}")
    if regex:
        return Regex(regex)
    if choice:
        return Choice(choice)
    if json_schema:
        try:
            return JsonSchema(json.loads(json_schema.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"--json-schema {json_schema}: cannot read a JSON schema ({err})") from None
    return None


@app.command()
def generate(
    prompt: PromptOpt,
    model: ModelOpt = "smollm2-135m",
    backend: BackendOpt = "auto",
    n: Annotated[int, typer.Option(help="Samples per prompt.")] = 1,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    max_new_tokens: Annotated[int, typer.Option()] = 128,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    adapter: Annotated[str | None, typer.Option(help="LoRA adapter name (see -o adapters=...).")] = None,
    cache: CacheOpt = None,
    option: OptionOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per prompt.")] = False,
    regex: Annotated[str | None, typer.Option("--regex", help="Constrain every answer to match this regular "
                                              "expression in full.")] = None,
    json_schema: Annotated[Path | None, typer.Option("--json-schema", help="Constrain every answer to one JSON "
                                                     "value valid under the schema in this file.")] = None,
    choice: Annotated[list[str] | None, typer.Option("--choice", help="Constrain every answer to one of these "
                                                     "strings (repeatable).")] = None,
) -> None:
    """Generate completions for one or more prompts (chat template applied), optionally constrained."""
    constraint = _constraint(regex, json_schema, choice)
    llm = _load(model, backend, cache, option)
    gens = llm.generate(prompt, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                        stop=stop, seed=seed, adapter=adapter, **({"constraint": constraint} if constraint else {}))
    for p, g in zip(prompt, gens, strict=True):
        if as_json:
            typer.echo(json.dumps({"prompt": p, "texts": g.texts, "prompt_tokens": g.prompt_tokens,
                                   "completion_tokens": g.completion_tokens, "cached": g.cached}))
        else:
            for text in g.texts:
                typer.echo(text)
                if n > 1 or len(prompt) > 1:
                    typer.echo("---")


@app.command()
def score(
    prompt: PromptOpt,
    model: ModelOpt = "smollm2-135m",
    backend: BackendOpt = "auto",
    choices: Annotated[str, typer.Option(help="Comma-separated answers to compare.")] = "Yes,No",
    adapter: Annotated[str | None, typer.Option()] = None,
    cache: CacheOpt = None,
    option: OptionOpt = None,
) -> None:
    """Print the probability of each choice as the answer, renormalised over the choices."""
    names = [c.strip() for c in choices.split(",") if c.strip()]
    llm = _load(model, backend, cache, option)
    probs = llm.choice_probs(prompt, names, adapter=adapter)
    for p, row in zip(prompt, probs, strict=True):
        typer.echo(json.dumps({"prompt": p, **{c: round(float(v), 6) for c, v in zip(names, row, strict=True)}}))


@app.command()
def templates() -> None:
    """List the prompt templates (task × domain) and the paper each reproduces."""
    from ..llm.prompts import DOMAINS, TASKS, load_template

    for task in TASKS:
        typer.echo(f"{task:20s} {', '.join(DOMAINS):32s} {load_template(task, 'movie').source}")
