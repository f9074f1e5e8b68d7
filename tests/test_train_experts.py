"""LoRA experts (ThinkRec §3.3): exact fusion, routing rules, batched routed inference, expert training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from reasonrec.train.common import adapter_weights
from reasonrec.train.config import ExpertsSection, SFTConfig
from reasonrec.train.experts import (
    GLOBAL,
    cluster_users,
    expert_mixture,
    fused_adapter,
    gate_weights,
    load_experts,
    merged_delta,
    route_users,
    run_routed,
    train_experts,
)


def _three_adapter_model(path, seed=0):
    """Tiny model with adapters global/expert0/expert1 whose B matrices are random (non-zero), q/v targets."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = get_peft_model(base, cfg, adapter_name=GLOBAL)
    for name in ("expert0", "expert1"):
        model.add_adapter(name, LoraConfig(r=4, lora_alpha=8 if name == "expert0" else 4,
                                           target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    model.eval()
    return model


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return _three_adapter_model(tiny_model_path)


def _ids(n=3, t=7):
    g = torch.Generator().manual_seed(1)
    return torch.randint(5, 1000, (n, t), generator=g)


def _manual_logits(model, names, weights, ids):
    """Reference: a dense copy of the base model with W += Σ w_i s_i B_i A_i written into each layer."""
    import copy

    deltas = merged_delta(model, names, weights)
    with model.disable_adapter():
        dense = copy.deepcopy(model.get_base_model())
    mods = dict(dense.named_modules())
    with torch.no_grad():
        for name, delta in deltas.items():
            short = name.removeprefix("base_model.model.")
            mods[short].base_layer.weight += delta
    # the copied LoRA layers must stay off: compute with adapters disabled on the copy
    from peft.tuners.lora import LoraLayer

    for m in dense.modules():
        if isinstance(m, LoraLayer):
            m._disable_adapters = True
    with torch.no_grad():
        return dense(input_ids=ids).logits


def test_cat_fusion_and_mixture_hooks_equal_dense_merge_linear_does_not(model):
    ids = _ids()
    names, w = ["expert0", "expert1"], [0.7, 0.3]
    ref = _manual_logits(model, names, w, ids)
    fused_adapter(model, names, w, "fused_cat")
    model.set_adapter("fused_cat")
    with torch.no_grad():
        cat = model(input_ids=ids).logits
    with torch.no_grad(), expert_mixture(model, names, torch.tensor([w] * len(ids))):
        mix = model(input_ids=ids).logits
    torch.testing.assert_close(cat, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mix, ref, atol=1e-5, rtol=1e-5)
    # peft "linear" averages A and B separately: cross terms B_i A_j make it differ from the exact merge.
    model.add_weighted_adapter(names, w, "fused_linear", combination_type="linear")
    model.set_adapter("fused_linear")
    with torch.no_grad():
        lin = model(input_ids=ids).logits
    assert (lin - ref).abs().max() > 1e-3
    model.set_adapter(GLOBAL)
    # hooks are gone after the block: the global adapter's output is untouched
    with torch.no_grad():
        again = model(input_ids=ids).logits
    model.set_adapter(GLOBAL)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(again, plain)


def test_one_hot_mixture_equals_that_expert_and_rows_get_their_own_weights(model):
    ids = _ids()
    names = ["expert0", "expert1"]
    model.set_adapter("expert1")
    with torch.no_grad():
        alone = model(input_ids=ids).logits
    w = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.0, 1.0]])
    with torch.no_grad(), expert_mixture(model, names, w):
        mixed = model(input_ids=ids).logits
    torch.testing.assert_close(mixed[[0, 2]], alone[[0, 2]], atol=1e-5, rtol=1e-5)
    ref_half = _manual_logits(model, names, [0.5, 0.5], ids[1:2])
    torch.testing.assert_close(mixed[1:2], ref_half, atol=1e-5, rtol=1e-5)
    model.set_adapter(GLOBAL)


def test_gate_and_routing_rules():
    centers = np.array([[1.0, 0.0], [0.0, 1.0]])
    users = np.array([[1.0, 0.02], [1.0, 1.0], [1.0, 0.85]])
    w = gate_weights(users, centers, tau=0.1)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    routes = route_users(w)
    assert routes[0].kind == "expert" and routes[0].expert == 0       # max w ≈ 1 > 0.5 + 0.6/2
    assert routes[1].kind == "global"                                 # equal cosines: entropy = log 2
    assert routes[2].kind == "fused"                                  # in between
    # the single-expert threshold is 0.5 + 0.6/N: with N = 2 a weight of 0.79 is not enough
    assert route_users(torch.tensor([[0.79, 0.21]]))[0].kind == "fused"
    assert route_users(torch.tensor([[0.81, 0.19]]))[0].kind == "expert"


def test_cluster_users_picks_k_by_silhouette_and_ward_agrees():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.3, size=(20, 4)) for c in (-5, 0, 5)]) * [1, 10, 100, 1000]
    km = cluster_users(blobs, method="kmeans", k="auto", seed=0)
    assert km.k_ == 3 and max(km.silhouettes_, key=km.silhouettes_.get) == 3
    ward = cluster_users(blobs, method="ward", k=3)
    # same partition up to label names
    assert len(set(zip(km.labels_.tolist(), ward.labels_.tolist(), strict=True))) == 3
    assert km.centers_.shape == (3, 4)


def test_run_routed_groups_users_and_matches_per_user_runs(model):
    ids = _ids(4)
    names = ["expert0", "expert1"]
    routes = route_users(torch.tensor([[0.95, 0.05], [0.5, 0.5], [0.7, 0.3], [0.05, 0.95]]))
    assert [r.key for r in routes] == ["expert0", "global", "fused", "expert1"]
    calls = []

    def fn(idx):
        calls.append(list(idx))
        with torch.no_grad():
            return list(model(input_ids=ids[idx]).logits[:, -1])

    out = run_routed(model, routes, 2, fn)
    assert sorted(len(c) for c in calls) == [1, 1, 1, 1]  # one batch per choice
    for i, r in enumerate(routes):
        if r.kind == "fused":
            ref = _manual_logits(model, names, list(r.weights), ids[i:i + 1])[0, -1]
        else:
            model.set_adapter(r.key)
            with torch.no_grad():
                ref = model(input_ids=ids[i:i + 1]).logits[0, -1]
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-5)
    model.set_adapter(GLOBAL)


def test_train_experts_starts_from_global_and_only_moves_last_layers(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    from reasonrec.train.sft import train_sft

    users = list(range(12))
    rng = np.random.default_rng(0)
    emb = {u: (rng.normal(size=4) + (6 if u < 6 else -6)).tolist() for u in users}
    df = pd.DataFrame({"user_id": users, "prompt": [f"Do you like item {u}?" for u in users],
                       "completion": ["Yes" if u < 6 else "No" for u in users]})
    base_cfg = {"model": {"name": str(tiny_model_path), "lora": {"targets": "all-linear"}},
                "data": {"train": "unused.jsonl"},
                "training": {"max_steps": 3, "learning_rate": 1e-2, "save_steps": 100, "logging_steps": 1,
                             "per_device_train_batch_size": 4}}
    glob = train_sft(SFTConfig.model_validate({**base_cfg, "training": {**base_cfg["training"],
                                                                        "output_dir": str(tmp_path / "global")}}), df)
    cfg = SFTConfig.model_validate({**base_cfg, "training": {**base_cfg["training"], "output_dir": str(tmp_path / "x")}})
    res = train_experts(cfg, glob.adapter_dir, df, emb, ExpertsSection(k="auto", k_range=(2, 4), last_layers=1),
                        out_dir=tmp_path / "experts")
    assert res.clustering.k_ == 2
    g = adapter_weights(glob.adapter_dir)
    for d in res.adapter_dirs:
        e = adapter_weights(d)
        assert e.keys() == g.keys()
        moved = {k for k in g if not torch.equal(g[k], e[k])}
        assert moved and all(".layers.1." in k for k in moved)  # tiny model: 2 layers, last 1 trainable
    model, info = load_experts(AutoModelForCausalLM.from_pretrained(tiny_model_path), res.folder)
    assert set(model.peft_config) == {GLOBAL, "expert0", "expert1"} and info["k"] == 2
