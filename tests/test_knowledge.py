"""Text knowledge → vectors: encoders by name (the real bundled all-MiniLM-L6-v2) and the Parquet knowledge store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _ctr_synth import synth_world

from reasonrec.errors import BackendError, ConfigError, DataError
from reasonrec.knowledge import KnowledgeStore, item_text, load_encoder
from reasonrec.llm.bundled import minilm_dir

torch.set_num_threads(1)
TEXTS = ["A space opera about rebels fighting an empire.", "An animated comedy about talking toys.",
         "Star wars: rebels battle the galactic empire in space."]


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm")


class CountingEncoder:
    """Wraps a real encoder and counts the texts it is asked to encode."""

    def __init__(self, enc):
        self.enc, self.name, self.dim, self.calls = enc, enc.name, enc.dim, []

    def encode(self, texts, batch_size=64, progress=False):
        self.calls.append(list(texts))
        return self.enc.encode(texts, batch_size=batch_size)


def test_bundled_minilm_encodes_meaningfully(minilm):
    v = minilm.encode(TEXTS)
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)  # the ST pipeline ends in Normalize
    sim = v @ v.T
    assert sim[0, 2] > sim[0, 1] + 0.2  # the two space-opera texts are closer than the toy comedy
    assert minilm.encode([]).shape == (0, 384)


def test_encoder_by_folder_and_pooling(minilm):
    ref = minilm.encode(TEXTS)
    by_path = load_encoder(str(minilm_dir()))  # a local sentence-transformers folder
    assert np.allclose(by_path.encode(TEXTS), ref, atol=1e-5)
    # forcing plain-transformers mean pooling reproduces the ST output up to its final L2 normalisation
    mean = load_encoder(f"{minilm_dir()}:mean")
    assert mean._st is None and mean.pooling == "mean"
    m = mean.encode(TEXTS)
    assert np.allclose(m / np.linalg.norm(m, axis=1, keepdims=True), ref, atol=1e-4)
    cls = load_encoder("minilm:cls").encode(TEXTS)
    assert cls.shape == (3, 384) and not np.allclose(cls, m, atol=1e-2)


def test_encoder_name_errors(tmp_path):
    with pytest.raises(ConfigError, match="pooling suffix"):
        load_encoder("minilm:max")
    with pytest.raises(ConfigError, match="not a known name"):
        load_encoder(str(tmp_path / "nowhere"))
    try:
        load_encoder("bge-m3")
    except BackendError as err:  # the usual case offline: not in the local HF cache
        assert "local Hugging Face cache" in str(err)


def test_store_encodes_once_and_reuses(tmp_path, minilm):
    enc = CountingEncoder(minilm)
    path = tmp_path / "k.parquet"
    store = KnowledgeStore(path)
    # the same text for two entities is encoded once
    assert store.add("item", [1, 2, 3], [TEXTS[0], TEXTS[1], TEXTS[0]], enc, progress=False) == 2
    assert sum(len(c) for c in enc.calls) == 2 and len(store) == 3
    assert store.add("item", [1, 2, 3], [TEXTS[0], TEXTS[1], TEXTS[0]], enc, progress=False) == 0
    assert len(store) == 3  # no duplicate rows
    # a fresh store reads the Parquet file and only encodes what is new
    again = KnowledgeStore(path)
    assert len(again) == 3
    assert again.add("user", [7], [TEXTS[0]], enc, progress=False) == 0  # known text, new entity kind
    assert again.add("item", [4], [TEXTS[2]], enc, progress=False) == 1
    assert sum(len(c) for c in enc.calls) == 3
    m = KnowledgeStore(path).matrix("item", enc.name, 4)
    assert m.shape == (5, 384) and not m[0].any()
    assert np.allclose(m[1], minilm.encode([TEXTS[0]])[0], atol=1e-5)
    assert np.allclose(m[3], m[1])


def test_store_aggregation_mean_and_separate(tmp_path, minilm):
    store = KnowledgeStore(tmp_path / "k.parquet")
    store.add("user", [1, 1, 2], TEXTS, minilm, progress=False)
    v = minilm.encode(TEXTS)
    mean = store.matrix("user", minilm.name, 3)
    assert mean.shape == (4, 384)
    assert np.allclose(mean[1], v[:2].mean(0), atol=1e-5) and np.allclose(mean[2], v[2], atol=1e-5)
    assert not mean[3].any()  # an entity without text is zeros
    sep = store.matrix("user", minilm.name, 3, agg="separate")
    assert sep.shape == (4, 2, 384)
    assert np.allclose(sep[1, 0], v[0], atol=1e-5) and np.allclose(sep[1, 1], v[1], atol=1e-5)
    assert np.allclose(sep[2, 0], v[2], atol=1e-5) and not sep[2, 1].any()
    with pytest.raises(DataError, match="no vectors of kind 'item'"):
        store.matrix("item", minilm.name, 3)
    with pytest.raises(DataError, match="beyond n_entities"):
        store.matrix("user", minilm.name, 1)


def test_store_rejects_bad_input(tmp_path, minilm):
    with pytest.raises(DataError, match="2 entity ids but 1 texts"):
        KnowledgeStore(tmp_path / "a.parquet").add("item", [1, 2], ["x"], minilm, progress=False)
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(bad)
    with pytest.raises(DataError, match="columns"):
        KnowledgeStore(bad)


def test_item_text_knowledge_field_feeds_a_ctr_model(tmp_path, minilm):
    """The pipeline helper: items' titles + genres → store → an item-keyed field a CTR model consumes."""
    from reasonrec.rec.ctr import CTRModelConfig, build_ctr_model
    from reasonrec.rec.features import FeatureBuilder
    from reasonrec.rec.pipeline import item_text_knowledge

    items, users, df, _ = synth_world(n_users=10, n_items=12, n_samples=40, hist_len=4)
    text = item_text(items)
    assert text.iloc[0].startswith("Title: ") and "Genres: " in text.iloc[0]

    class T:
        dataset = "synth"

    tables = T()
    tables.items = items
    k = item_text_knowledge(tables, "minilm", store_path=tmp_path / "items.parquet", progress=False)
    assert k.key == "item_id" and k.table.shape == (13, 384)
    fb = FeatureBuilder(items, users, history_len=4, knowledge=[k])
    model = build_ctr_model("din", fb.feature_map, CTRModelConfig(embedding_dim=8, mlp_hidden=(8,)))
    assert model(fb.encode(df).batch(torch.arange(5)))["logit"].shape == (5,)
