"""Quality of generated reasons against reference reasons (ThinkRec §4.1.3, Tab. 3: METEOR and BLEURT).

- **METEOR** (Banerjee & Lavie 2005) — nltk's ``meteor_score`` with WordNet read offline: nltk's own data
  (``nltk.download('wordnet')``, if present) or the Debian ``wordnet-base`` files in ``/usr/share/wordnet``
  (``REASONREC_WORDNET`` names another folder; copied once into the reasonrec cache with the ``lexnames`` file
  Debian leaves out). Without WordNet it is skipped (``None``) with a warning: METEOR
  without synonym matching is a different metric and must not be reported under its name.
- **BLEU** — sentence BLEU-4 with nltk's smoothing method 1 (short reasons have no 4-gram matches otherwise).
- **ROUGE-L** — F-measure of the longest common subsequence (Lin 2004), Google's ``rouge-score`` with stemming.
- **BERTScore** (Zhang et al. 2020) — greedy cosine matching of contextual token embeddings, F1, here with the
  bundled MiniLM encoder's token states (no idf weighting, no baseline rescaling: values are comparable only
  between systems scored by the same encoder).
- **BLEURT** — only when a local checkpoint is given (``bleurt`` package); ThinkRec reports it, we ship none.

Tokenisation: lower-cased word tokens (``\\w+``), the same for every metric that needs tokens.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_WORD = re.compile(r"\w+")
WORDNET_DIRS = ("/usr/share/wordnet",)


def tokens(text: str) -> list[str]:
    return _WORD.findall(str(text).lower())


# WordNet 3.0's lexicographer files (wndb(5WN) "lexnames"); Debian's wordnet-base omits the file nltk reads them
# from, so it is written beside copies of the Debian data files (~30 MB, once, in the reasonrec cache).
_LEXNAMES = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
             "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
             "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
             "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
             "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
             "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
             "adj.ppl").split()
_POS = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def _wordnet_folder(root: Path) -> Path:
    """``root`` itself if it has ``lexnames``; else a cache folder with copies of its files plus ``lexnames``."""
    if (root / "lexnames").exists():
        return root
    from .. import io

    out = io.cache_dir() / "wordnet"
    out.mkdir(parents=True, exist_ok=True)
    import shutil

    for f in root.iterdir():   # copies, not links: nltk refuses files that resolve outside the corpus folder
        if f.is_file() and not (out / f.name).exists():
            shutil.copyfile(f, out / f"{f.name}.part")
            (out / f"{f.name}.part").replace(out / f.name)
    if not (out / "lexnames").exists():
        io.write_text(out / "lexnames", "".join(f"{i:02d}\t{n}\t{_POS[n.split('.')[0]]}\n"
                                                for i, n in enumerate(_LEXNAMES)))
    return out


def load_wordnet():
    """nltk's WordNet reader on local files, or ``None`` (nothing is downloaded)."""
    try:
        import nltk
        from nltk.corpus import wordnet
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        return None
    try:
        wordnet.ensure_loaded()
        return wordnet
    except LookupError:
        pass
    for root in [os.environ.get("REASONREC_WORDNET"), *WORDNET_DIRS]:
        if root and (Path(root) / "data.noun").exists():
            folder = _wordnet_folder(Path(root))
            # nltk ≥ 3.9 reads corpora only under its data path (nltk.pathsec)
            if str(folder) not in nltk.data.path:
                nltk.data.path.append(str(folder))

            class LocalWordNet(WordNetCorpusReader):
                def map_wn(self, version="wordnet"):
                    # the map from nltk's own WordNet data to these files serves the multilingual OMW functions
                    # only; without nltk's data it would fail, and these files are WordNet 3.0 already
                    return None

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)   # "multilingual functions are not available"
                return LocalWordNet(str(folder), None)
    return None


def meteor(hyps: Sequence[str], refs: Sequence[str]) -> float | None:
    wn = load_wordnet()
    if wn is None:
        warnings.warn("METEOR skipped: WordNet not found offline (apt-get install wordnet-base, or nltk's wordnet "
                      "data, or REASONREC_WORDNET=<folder>)", stacklevel=2)
        return None
    from nltk.translate.meteor_score import meteor_score

    return float(np.mean([meteor_score([tokens(r)], tokens(h), wordnet=wn) for h, r in zip(hyps, refs, strict=True)]))


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smooth = SmoothingFunction().method1
    return float(np.mean([sentence_bleu([tokens(r)], tokens(h), smoothing_function=smooth) if tokens(h) else 0.0
                          for h, r in zip(hyps, refs, strict=True)]))


def rouge_l(hyps: Sequence[str], refs: Sequence[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(np.mean([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs, strict=True)]))


def bertscore(hyps: Sequence[str], refs: Sequence[str], encoder: str = "minilm") -> float:
    """Mean BERTScore F1 with ``encoder``'s token states (L2-normalised, special tokens dropped)."""
    import torch

    from ..knowledge import load_encoder

    enc = load_encoder(encoder)
    st = enc._st
    if st is None:
        raise ValueError(f"bertscore: encoder '{encoder}' is not a sentence-transformers model")

    def states(texts: list[str]) -> list[torch.Tensor]:
        out = st.encode(texts, output_value="token_embeddings", convert_to_numpy=False, show_progress_bar=False)
        # drop [CLS] and [SEP]; an empty text keeps its one special token so the matching is defined
        return [torch.nn.functional.normalize((t[1:-1] if len(t) > 2 else t).float(), dim=-1) for t in out]

    f1 = []
    for h, r in zip(states([str(x) for x in hyps]), states([str(x) for x in refs]), strict=True):
        sim = h @ r.T
        p, rc = float(sim.max(1).values.mean()), float(sim.max(0).values.mean())
        f1.append(0.0 if p + rc == 0 else 2 * p * rc / (p + rc))
    return float(np.mean(f1))


def reason_report(hyps: Sequence[str], refs: Sequence[str], encoder: str = "minilm") -> dict[str, float | None]:
    """METEOR, BLEU, ROUGE-L and BERTScore of ``hyps`` against ``refs`` (one reference each)."""
    if len(hyps) != len(refs):
        raise ValueError(f"reason_report: {len(hyps)} hypotheses for {len(refs)} references")
    if not hyps:
        return {"meteor": None, "bleu": None, "rouge_l": None, "bertscore": None, "n": 0}
    return {"meteor": meteor(hyps, refs), "bleu": bleu(hyps, refs), "rouge_l": rouge_l(hyps, refs),
            "bertscore": bertscore(hyps, refs, encoder), "n": len(hyps)}
