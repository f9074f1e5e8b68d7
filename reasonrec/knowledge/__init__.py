"""Text knowledge → vectors: encoders by name and a Parquet knowledge store keyed so vectors are computed once.

    enc = load_encoder("minilm")
    store = KnowledgeStore(run_dir / "knowledge.parquet")
    store.add("item", items.item_id, item_text(items), enc)
    table = store.matrix("item", enc.name, n_items)          # (n_items + 1, 384), row 0 = padding
"""

from .encoders import TextEncoder, load_encoder
from .store import KnowledgeStore, item_text

__all__ = ["KnowledgeStore", "TextEncoder", "item_text", "load_encoder"]
