"""One call from (splits, tables) to test metrics for a CTR backbone, for both protocol kinds.

Pointwise protocols (collm, kar, tallrec): train on ``train``, early-stop on ``valid`` AUC, report
:func:`~reasonrec.eval.metrics.pointwise_report` on ``test``. Ranking protocol (starec): every candidate list is
exploded into pointwise rows (positive = 1, negatives = 0); the model trains on the training users' lists,
early-stops on the AUC of a held-out 10% of them, and the test lists are ranked by score
(:func:`~reasonrec.eval.metrics.ranking_report`, NDCG@1/5/10/20 averaged over negative draws).
"""

from __future__ import annotations

import numpy as np
import torch

from ..eval import metrics as M
from .ctr import CTRModelConfig, build_ctr_model
from .features import FeatureBuilder, KnowledgeInput, explode_candidates
from .trainer import CTRTrainConfig, predict, train_ctr

# Whether a protocol's test users have training rows by construction, i.e. whether fields that identify a user
# can be learnt for them. collm splits by calendar month (ML-100K: 86% of test samples are from users with no
# training row), tallrec cuts users walked in order (0% on ML-100K) and starec samples disjoint train / test users
# (0%); kar splits each user's own interactions 80/20 (100%). An unlearnt user-id row stays at its ~0 init, which
# the model never saw while training, and the model leans on the id instead of the history every user has. The
# demographics do the same: ML-100K's raw age (61 values) x gender x occupation singles out 35% of the users, so
# they act as a second user id (issue 15, ML-100K collm seed 0, DeepFM test AUC: 0.734 with both, 0.746 without
# the id, 0.752 without either).
USER_FIELDS: dict[str, bool] = {"collm": False, "tallrec": False, "starec": False, "kar": True}


def run_ctr(name: str, splits, tables, model_cfg: CTRModelConfig | None = None,
            train_cfg: CTRTrainConfig | None = None, knowledge: list[KnowledgeInput] | tuple = (),
            history_len: int = 20, hist_ratings: bool = True, use_demographics: bool | None = None) -> dict:
    """Build features, train CTR backbone ``name`` and return its test metrics (plus training info).

    ``model_cfg.user_id_field=None`` and ``use_demographics=None`` are resolved here from the protocol
    (:data:`USER_FIELDS`), never from the held-out samples.
    """
    train_cfg = train_cfg or CTRTrainConfig()
    model_cfg = model_cfg or CTRModelConfig()
    user_fields = USER_FIELDS.get(getattr(splits, "protocol", ""), True)
    if model_cfg.user_id_field is None:
        model_cfg = model_cfg.model_copy(update={"user_id_field": user_fields})
    if use_demographics is None:
        use_demographics = user_fields
    n_users = int(max(tables.users["user_id"].max() if len(tables.users) else 0,
                      tables.interactions["user_id"].max()))
    builder = FeatureBuilder(tables.items, tables.users, history_len=history_len, hist_ratings=hist_ratings,
                             knowledge=knowledge, n_users=n_users, use_demographics=use_demographics)
    ranking = "candidate_ids" in splits.test.columns
    if ranking:
        rows = explode_candidates(splits.train)
        lists = rows["list_id"].to_numpy()
        rng = np.random.default_rng(train_cfg.seed)
        held = rng.random(int(lists.max()) + 1 if len(lists) else 0) < 0.1
        train_df, valid_df = rows[~held[lists]], rows[held[lists]]
    else:
        train_df, valid_df = splits.train, splits.valid
    torch.manual_seed(train_cfg.seed)
    model = build_ctr_model(name, builder.feature_map, model_cfg)
    train, valid = builder.encode(train_df, where="train"), builder.encode(valid_df, where="valid")
    if not ranking:
        return train_ctr(model, train, valid, train_cfg, test=builder.encode(splits.test, where="test"))
    out = train_ctr(model, train, valid, train_cfg)
    test_rows = explode_candidates(splits.test)
    probs = predict(model, builder.encode(test_rows, where="test"), train_cfg.eval_batch_size, train_cfg.device)
    n_lists = len(splits.test)
    scores = probs.reshape(n_lists, -1)
    pos_index = test_rows["label"].to_numpy().reshape(n_lists, -1).argmax(1)
    draws = splits.test["draw"].to_numpy() if "draw" in splits.test.columns else None
    point = M.pointwise_report(test_rows["user_id"].to_numpy(), test_rows["label"].to_numpy(), probs)
    # the per-user ndcg@5/map@5 of the pointwise report would overwrite the candidate-list ones
    out.update({k: point[k] for k in ("auc", "uauc", "logloss", "acc")})
    out.update(M.ranking_report(scores, pos_index, draws=draws))
    return out


def item_text_knowledge(tables, encoder: str = "minilm", store_path=None, progress: bool = True) -> KnowledgeInput:
    """An item-keyed knowledge field from the items' titles + genres, encoded once into a knowledge store."""
    from ..io import cache_dir
    from ..knowledge import KnowledgeStore, item_text, load_encoder

    enc = load_encoder(encoder)
    path = store_path or cache_dir() / "knowledge" / f"{getattr(tables, 'dataset', 'data')}-items.parquet"
    store = KnowledgeStore(path)
    items = tables.items
    store.add("item", items["item_id"], item_text(items), enc, progress=progress)
    n_items = int(items["item_id"].max())
    return KnowledgeInput("item_text", "item_id", store.matrix("item", enc.name, n_items))


