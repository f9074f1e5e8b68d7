"""A scripted R4ec teacher for tests: well-formed answers whose verdicts and judgements are a deterministic
function of the prompt (a random tiny model never writes the tagged format, so no branch would be reached).

Importable from a subprocess too, so a test can kill -9 a real run that uses it.
"""

from __future__ import annotations

import hashlib
import re

from reasonrec import checks
from reasonrec.llm import base as llm_base
from reasonrec.llm.base import Generation, as_messages


class HashTeacher:
    """Well-formed answers whose verdicts and judgements are a deterministic function of the prompt, so that a
    few dozen cases spread over every branch of Algorithm 1."""

    model_id = "hash-teacher"
    supports = frozenset({"generate"})

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=16, stop=None, seed=0, adapter=None):
        out = []
        for p in prompts:
            self.calls += 1
            text = "\n".join(m["content"] for m in as_messages(p))
            h = int(hashlib.sha256(f"{text}{seed}".encode()).hexdigest(), 16)
            side = "User Preference" if "User History>" in text and "Target User" not in text else "Item Fact"
            verdict = "user will like the target movie" if h % 2 else "user will not like the target movie"
            if "<Final Judgement>" in text:
                noun = "user preference" if side == "User Preference" else "item fact"
                ok = (h >> 3) % 2
                answer = (f"<Final Judgement>The {noun} is {'reasonable' if ok else 'not reasonable'}</Final Judgement>"
                          f"\n<Reflection>{'' if ok else 'Look at the low ratings.'}</Reflection>")
            elif "<Reflection>" in text:
                tag = "Refined " + side
                answer = f"<{tag}>Refined: likes {h % 7}.</{tag}>\n<Final Verdict>{verdict}</Final Verdict>"
            else:
                answer = f"<{side}>Likes genre {h % 5}.</{side}>\n<Final Verdict>{verdict}</Final Verdict>"
            assert re.search(r"Target (Movie Name|User History)", text)  # construction prompts carry the target
            out.append(Generation(texts=[answer], completion_tokens=[8]))
        return out


def install(teacher: HashTeacher | None = None, setattr=setattr) -> HashTeacher:
    """Make ``load_llm("hash-teacher")`` return ``teacher``; every other name loads the real model."""
    teacher = teacher or HashTeacher()
    real = llm_base.load_llm

    def load(name="smollm2-135m", backend="auto", cache=None, **options):
        if name == "hash-teacher":
            return teacher
        return real(name, backend=backend, cache=cache, **options)

    setattr(llm_base, "load_llm", load)
    real_check = checks.Checker.llm

    def check(self, key, name, *args, **kwargs):  # the pre-run name checks must know the scripted name too
        if name != "hash-teacher":
            real_check(self, key, name, *args, **kwargs)

    setattr(checks.Checker, "llm", check)
    return teacher


if __name__ == "__main__":  # python tests/_r4ec_teacher.py CONFIG: a run with the scripted teacher
    import sys

    from reasonrec.methods import run_experiment

    install()
    run_experiment(sys.argv[1])
