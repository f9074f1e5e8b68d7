"""Experiments: each published method as a short composition of the shared parts (plain recommenders run from
``reasonrec rec train``).

A method module defines ``Config`` (a :class:`~reasonrec.config.Section` whose ``method`` field is a
``Literal`` of its name) and ``run(cfg, run_dir) -> dict``. :func:`run_experiment` reads the YAML, picks the
module from the literal registry below by the ``method`` key, validates the whole file against that module's
``Config``, and runs it in its run directory.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from types import ModuleType

from ..config import read_yaml, validate
from ..errors import ConfigError
from ..runs import RunDir


def _r4ec() -> ModuleType:
    from . import r4ec

    return r4ec


def _trackrec() -> ModuleType:
    from . import trackrec

    return trackrec


def _starec() -> ModuleType:
    from . import starec

    return starec


def _thinkrec() -> ModuleType:
    from . import thinkrec

    return thinkrec


# name → loader; modules import torch and friends, so they load only when chosen.
METHODS = {
    "r4ec": _r4ec,
    "trackrec": _trackrec,
    "starec": _starec,
    "thinkrec": _thinkrec,
}


def method_module(name: str, source: str = "<config>") -> ModuleType:
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{source}: key 'method': unknown method {name!r}{hint} (known: {', '.join(METHODS)})")
    return METHODS[name]()


def load_experiment(path: str | Path):
    raw = read_yaml(path)
    if "method" not in raw:
        raise ConfigError(f"{path}: missing required key 'method' (one of: {', '.join(METHODS)})")
    module = method_module(raw["method"], str(path))
    return module, validate(module.Config, raw, str(path))


def run_experiment(path: str | Path, run_dir: str | Path | None = None, data_dir: str | Path | None = None,
                   engine: str | None = None, address: str | None = None) -> dict:
    """Validate the experiment at ``path`` and run it; returns the method's results dict."""
    module, cfg = load_experiment(path)
    return run_loaded(module, cfg, run_dir, data_dir, source=str(path), engine=engine, address=address)


def resolve_paths(cfg, run_dir: str | Path | None = None, data_dir: str | Path | None = None,
                  engine: str | None = None, address: str | None = None) -> None:
    """Apply ``run_dir`` / ``data_dir`` (or ``REASONREC_DATA_DIR``) and ``--engine`` / ``--address`` over the
    config's own."""
    if engine is not None or address is not None:
        if not hasattr(cfg, "engine"):
            raise ConfigError(f"method {cfg.method!r} has no engine setting")
        update = {"kind": engine or ("ray" if address else cfg.engine.kind)}
        if address is not None:
            update["address"] = address
        cfg.engine = type(cfg.engine).model_validate({**cfg.engine.model_dump(), **update})  # validated
    if run_dir is not None:
        cfg.run_dir = Path(run_dir)
    if data_dir is not None:
        cfg.data.data_dir = Path(data_dir)
    elif cfg.data.data_dir is None and os.environ.get("REASONREC_DATA_DIR"):
        cfg.data.data_dir = Path(os.environ["REASONREC_DATA_DIR"])


def check_experiment(module: ModuleType, cfg, source: str = "<config>") -> None:
    """Resolve every name the config gives (the method's ``check``); one :class:`ConfigError` lists them all."""
    from ..checks import Checker

    checker = Checker(source)
    engine = getattr(cfg, "engine", None)
    if engine is not None and engine.kind == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            checker.problem("engine.kind", "engine 'ray' needs Ray: pip install 'reasonrec[ray]'")
    check = getattr(module, "check", None)
    if check is not None:
        check(cfg, checker)
    checker.raise_if_any()


def run_loaded(module: ModuleType, cfg, run_dir: str | Path | None = None,
               data_dir: str | Path | None = None, source: str = "<config>", engine: str | None = None,
               address: str | None = None) -> dict:
    """Check and run a validated experiment; ``run_dir`` / ``data_dir`` (or ``REASONREC_DATA_DIR``) and
    ``engine`` / ``address`` override the config's. The run holds the run directory's lock from before
    ``config.yaml`` is written to the end; its LLM calls run on the config's engine (:mod:`reasonrec.llm.engine`)."""
    resolve_paths(cfg, run_dir, data_dir, engine, address)
    check_experiment(module, cfg, source)
    from ..llm.engine import use_engine
    from ..progress import set_stage

    run = RunDir(cfg.run_dir)
    engine = getattr(cfg, "engine", None)
    try:
        with run.lock(), use_engine(engine):
            run.write_config(cfg)
            if engine is not None and engine.kind != "local":
                run.log(f"engine: {engine.kind} (address {engine.address or 'local cluster / RAY_ADDRESS'})")
            try:
                return module.run(cfg, run)
            finally:
                _record_precision(run)
    finally:
        set_stage(None)  # later progress bars in this process (another run, a test) are not this run's


def _record_precision(run: RunDir) -> None:
    """The dtype every model of the run was loaded in (bf16 where the CPU runs it natively, else fp32: issue 14),
    in the run log and ``manifest.json``."""
    from ..llm.device import dtype_manifest

    precision = dtype_manifest()
    seen = sorted({(c["where"], c["dtype"], c["reason"]) for c in precision["choices"]})
    for where, dtype, reason in seen:
        run.log(f"precision: {where or 'model'} in {dtype} ({reason})")
    run.update_manifest(precision=precision)
