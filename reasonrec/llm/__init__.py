"""The LLM substrate: one interface (:class:`LLM`), four backends, bundled offline models, prompt templates,
output parsers and a persistent generation cache.

    from reasonrec.llm import load_llm
    llm = load_llm("smollm2-135m", cache="run/gen.sqlite")
    llm.generate(["..."], n=10, temperature=1.0, top_p=0.9)     # TrackRec N-sampling
    llm.choice_probs(prompts, ("Yes", "No"))                   # validator reward / ThinkRec score
    llm.sequence_logprob(prompts, completions)                 # DPO log-probs

Heavy libraries (torch, transformers, llama_cpp, openai) are imported by the backend modules only.
"""

from .base import LLM, Generation, LLMSection, SequenceLogprob, load_llm, load_llm_section

__all__ = ["LLM", "Generation", "LLMSection", "SequenceLogprob", "load_llm", "load_llm_section"]
