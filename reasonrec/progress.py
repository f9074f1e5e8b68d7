"""What a progress bar says it is doing: the run's stage ("stage 3/6 infer") and the step inside it
("user refinement · reflect"), set where the work is started and read where the bar is drawn.

A context variable, not an argument: the bars live in the LLM cache (:class:`reasonrec.llm.cache.CachedLLM`),
several calls below the method that knows which stage and step it is in, and threading a label through every
step function and backend would touch every signature for a display string. Shared parts only *read* it
(:func:`describe`); runs and methods set it (:meth:`reasonrec.runs.RunDir.stage`, :func:`step`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_STAGE: ContextVar[str | None] = ContextVar("reasonrec_stage", default=None)
_STEPS: ContextVar[tuple[str, ...]] = ContextVar("reasonrec_steps", default=())


def set_stage(label: str | None) -> None:
    """The stage now running (``"stage 3/6 infer"``); it stays until the next stage is set."""
    _STAGE.set(label)


@contextlib.contextmanager
def step(label: str) -> Iterator[None]:
    """Name the work inside ``with``; nested steps are joined (``user refinement · reflect``)."""
    token = _STEPS.set((*_STEPS.get(), label))
    try:
        yield
    finally:
        _STEPS.reset(token)


def describe(what: str = "") -> str:
    """``"stage 3/6 infer · user refinement · reflect"``, or ``what`` (e.g. ``"generate"``) outside a run.
    The backend call's own name is dropped inside a step: the step says more than "generate"."""
    steps = _STEPS.get()
    parts = [p for p in (_STAGE.get(), " · ".join(steps) if steps else what) if p]
    return " · ".join(parts)
