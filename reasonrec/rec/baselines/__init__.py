"""Classic recommendation baselines: Pop, MF (BCE / BPR), LightGCN, SASRec, gSASRec, GRU4Rec.

Usable for pointwise scoring (AUC protocols), for ranking a candidate list (STARec protocol), and as a source
of user/item embeddings (ThinkRec's collaborative tokens and user grouping)::

    from reasonrec.rec.baselines import train_baseline
    metrics = train_baseline("mf", splits, tables)            # pointwise_report / ranking_report + best_epoch
    metrics, rec = train_baseline("bpr_full", splits, tables, return_model=True)
    rec.user_embeddings(), rec.item_embeddings()

Why our own code: no maintained library covers these six models on today's torch with both a pointwise and a
candidate-ranking interface (RecBole 1.2 breaks on current numpy/torch; cornac / implicit have MF/BPR only — they
are the parity reference in ``benchmarks/parity_baselines.py``).
"""

from .data import EvalSet, TrainData, build_train_data, eval_set, pad_histories
from .models import MF, GRU4Rec, LightGCN, Pop, SASRec
from .train import BASELINES, BaselineConfig, BaselineRecommender, train_baseline

__all__ = [
    "BASELINES", "MF", "BaselineConfig", "BaselineRecommender", "EvalSet", "GRU4Rec", "LightGCN", "Pop", "SASRec",
    "TrainData", "build_train_data", "eval_set", "pad_histories", "train_baseline",
]
