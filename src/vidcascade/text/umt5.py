"""umT5 encoder (Wan's text encoder) through transformers' `UMT5EncoderModel`.

transformers is the optional extra `vidcascade[wan]` and is imported only inside functions.
Output follows the Wan convention (see text_encoder.py): [B, text_len, d_model] float32 with rows
past each prompt's true length (EOS included) set to 0.0, which equals Wan's trim-then-zero-pad.

Two on-disk layouts load:
  * Hugging Face: a folder with config.json + weights and the tokenizer files, or a diffusers
    pipeline folder with `text_encoder/` and `tokenizer/` sub-folders;
  * Wan original: `models_t5_umt5-xxl-enc-bf16.pth` (T5 names, renamed by `wan_t5_to_hf`) with the
    tokenizer in `google/umt5-xxl/`.
"""

from __future__ import annotations

import html
import importlib.util
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vidcascade.text.encoder import zero_rows_past_length

logger = logging.getLogger(__name__)

WAN_EXTRA_HINT = 'pip install "vidcascade[wan]"'
WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_T5_TOKENIZER_SUBDIR = "google/umt5-xxl"
MODEL_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")

# Per-block renames, Wan T5 (`wan/modules/t5.py`, T5SelfAttention) -> HF UMT5 (`encoder.block.{i}.`).
# Derived from both module trees: pre-norm attention is HF sub-layer 0, the gated FFN sub-layer 1;
# Wan computes fc1(x) * gelu_tanh(gate.0(x)) and HF gelu_new(wi_0(x)) * wi_1(x), so gate.0 -> wi_0.
_WAN_BLOCK_TO_HF = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_HF_BLOCK_TO_WAN = {hf: wan for wan, hf in _WAN_BLOCK_TO_HF.items()}
_WAN_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_BLOCK_RE = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")


def wan_t5_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Wan umT5 encoder state dict to `UMT5EncoderModel` names (tensors are not copied).

    The token embedding appears twice (`shared.weight`, `encoder.embed_tokens.weight`), as HF ties them.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = value
            out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif (m := _WAN_BLOCK_RE.match(key)) and m.group(2) in _WAN_BLOCK_TO_HF:
            out[f"encoder.block.{m.group(1)}.{_WAN_BLOCK_TO_HF[m.group(2)]}"] = value
        else:
            raise KeyError(f"unexpected key in Wan T5 state dict: {key!r}")
    return out


def hf_to_wan_t5(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `wan_t5_to_hf` (either copy of the tied embedding is accepted)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in ("shared.weight", "encoder.embed_tokens.weight"):
            out["token_embedding.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
        elif (m := _HF_BLOCK_RE.match(key)) and m.group(2) in _HF_BLOCK_TO_WAN:
            out[f"blocks.{m.group(1)}.{_HF_BLOCK_TO_WAN[m.group(2)]}"] = value
        else:
            raise KeyError(f"unexpected key in UMT5 encoder state dict: {key!r}")
    return out


def umt5_config_from_wan(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """`UMT5Config` keyword arguments read off the tensor shapes of a Wan T5 encoder state dict.

    Wan's umT5-XXL: vocab 256384, d_model 4096, 64 heads of 64, d_ff 10240, 24 layers, 32 buckets.
    """
    vocab, d_model = state["token_embedding.weight"].shape
    num_buckets, num_heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    d_ff = state["blocks.0.ffn.fc1.weight"].shape[0]
    inner = state["blocks.0.attn.q.weight"].shape[0]
    layers = 1 + max(int(m.group(1)) for k in state if (m := _WAN_BLOCK_RE.match(k)))
    return {
        "vocab_size": int(vocab),
        "d_model": int(d_model),
        "d_kv": int(inner) // int(num_heads),
        "d_ff": int(d_ff),
        "num_layers": int(layers),
        "num_heads": int(num_heads),
        "relative_attention_num_buckets": int(num_buckets),
        "relative_attention_max_distance": 128,  # T5RelativeEmbedding(max_dist=128)
        "feed_forward_proj": "gated-gelu",  # tanh GELU gate, HF "gelu_new"
        "layer_norm_epsilon": 1e-6,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


def clean_prompt(text: str) -> str:
    """Wan's 'whitespace' cleaning: ftfy (only if installed), HTML-unescape twice, collapse whitespace."""
    if importlib.util.find_spec("ftfy") is not None:
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _listing(folder: Path) -> str:
    if not folder.is_dir():
        return f"{folder} (not a directory)"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return f"{folder}: {names if names else 'empty'}"


def _has_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / n).is_file() for n in MODEL_WEIGHT_FILES)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in TOKENIZER_FILES)


def resolve_umt5_folders(path: str | Path, tokenizer_path: str | Path | None = None) -> tuple[Path, Path]:
    """Find (model folder, tokenizer folder) in a HF or diffusers layout; list what exists on failure."""
    root = Path(path)
    model_dir = next((d for d in (root, root / "text_encoder") if _has_model(d)), None)
    tok_candidates = [Path(tokenizer_path)] if tokenizer_path is not None else [root, root / "tokenizer"]
    tok_dir = next((d for d in tok_candidates if _has_tokenizer(d)), None)
    if model_dir is None or tok_dir is None:
        looked = {root, root / "text_encoder", *tok_candidates}
        found = "; ".join(_listing(d) for d in sorted(looked) if d.exists()) or f"{root} does not exist"
        missing = []
        if model_dir is None:
            missing.append(f"model (config.json + one of {list(MODEL_WEIGHT_FILES)})")
        if tok_dir is None:
            missing.append(f"tokenizer (one of {list(TOKENIZER_FILES)})")
        raise FileNotFoundError(f"umT5 folder {root} lacks the {' and the '.join(missing)}. Found: {found}")
    return model_dir, tok_dir


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"the umT5 text encoder needs transformers: {WAN_EXTRA_HINT}") from err
    return transformers


def _dtype_kwarg(transformers: Any, dtype: torch.dtype | None) -> dict[str, Any]:
    # `dtype=` replaced `torch_dtype=` in transformers 4.56; "auto" keeps the checkpoint's dtype.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    name = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    return {name: dtype if dtype is not None else "auto"}


def _load_tokenizer(folder: Path) -> Any:
    transformers = _import_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    tokenizer.padding_side = "right"  # rows past the true length are the padding
    return tokenizer


class UMT5TextEncoder:
    """Prompt encoder on a transformers `UMT5EncoderModel` and its tokenizer."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, text_len: int = 512) -> None:
        if text_len < 1:
            raise ValueError(f"text_len must be >= 1, got {text_len}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.text_dim = int(model.config.d_model)
        eos = tokenizer.eos_token_id
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        if eos is None or not probe or probe[-1] != eos:
            logger.warning("umT5 tokenizer does not append an EOS token (eos id %s, probe %s)", eos, probe)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        text_len: int = 512,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        tokenizer_path: str | Path | None = None,
    ) -> UMT5TextEncoder:
        """Load from local files only (never the network).

        `path` is a HF model folder, a diffusers pipeline folder (`text_encoder/` + `tokenizer/`), or
        a Wan folder holding `models_t5_umt5-xxl-enc-bf16.pth` and `google/umt5-xxl/`.
        dtype None keeps the checkpoint's dtype; the output is float32 either way.
        """
        root = Path(path)
        if (root / WAN_T5_FILE).is_file() and not _has_model(root):
            tok = tokenizer_path if tokenizer_path is not None else root / WAN_T5_TOKENIZER_SUBDIR
            return cls.from_wan_checkpoint(root / WAN_T5_FILE, tok, text_len, dtype, device)
        model_dir, tok_dir = resolve_umt5_folders(root, tokenizer_path)
        transformers = _import_transformers()
        start = time.perf_counter()
        model = transformers.UMT5EncoderModel.from_pretrained(
            str(model_dir), local_files_only=True, **_dtype_kwarg(transformers, dtype)
        )
        model.to(device or "cpu")
        encoder = cls(model, _load_tokenizer(tok_dir), text_len=text_len)
        logger.info("loaded umT5 encoder from %s in %.1f s", model_dir, time.perf_counter() - start)
        return encoder

    @classmethod
    def from_wan_checkpoint(
        cls,
        checkpoint: str | Path,
        tokenizer_path: str | Path,
        text_len: int = 512,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> UMT5TextEncoder:
        """Load Wan's original `.pth` (T5 key names) into a `UMT5EncoderModel`."""
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"Wan T5 checkpoint not found: {checkpoint}")
        if not _has_tokenizer(Path(tokenizer_path)):
            raise FileNotFoundError(
                f"no tokenizer ({list(TOKENIZER_FILES)}) in {_listing(Path(tokenizer_path))}"
            )
        transformers = _import_transformers()
        start = time.perf_counter()
        wan_state = torch.load(str(checkpoint), map_location="cpu", mmap=True, weights_only=True)
        config = transformers.UMT5Config(**umt5_config_from_wan(wan_state))
        state = wan_t5_to_hf(wan_state)
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        # The meta device skips random init of billions of parameters; assign keeps the loaded tensors.
        with torch.device("meta"):
            model = transformers.UMT5EncoderModel(config)
        model.load_state_dict(state, strict=True, assign=True)
        model.set_input_embeddings(model.shared)  # re-tie after assign replaced both parameters
        model.to(device or "cpu")
        encoder = cls(model, _load_tokenizer(Path(tokenizer_path)), text_len=text_len)
        logger.info("loaded Wan umT5 checkpoint %s in %.1f s", checkpoint, time.perf_counter() - start)
        return encoder

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned, EOS-terminated ids [B, text_len] and attention mask [B, text_len] (right padding)."""
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            max_length=self.text_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[B, text_len, d_model] float32; rows past each prompt's true length are exactly 0.0."""
        if not prompts:
            return torch.zeros(0, self.text_len, self.text_dim, device=self.device)
        ids, mask = self.tokenize(prompts)  # [B, L], [B, L]
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, D]
        return zero_rows_past_length(hidden.float(), mask.sum(dim=1))  # [B, L, D]
