"""Tiny checkpoints in the real on-disk formats (shared by test_loading.py and test_bundle.py)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vidcascade.config import ModelConfig
from vidcascade.models.wan_dit import CausalWanDiT

# dim 256 = 2 heads of Wan's head_dim 128, so that num_heads can be inferred from shapes alone.
TINY_WAN = ModelConfig(
    dim=256, ffn_dim=384, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=32, text_len=16
)


def random_state(cfg: ModelConfig = TINY_WAN, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in Wan names, scaled like an init (fan-in); biases and norm weights are random
    too (norm weights around 1), so that a swapped or skipped tensor shows up in the output."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CausalWanDiT(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        v = torch.randn(shape, generator=g)
        if "modulation" in k:
            v /= shape[-1] ** 0.5
        elif len(shape) >= 2:
            v /= math.prod(shape[1:]) ** 0.5
        elif k.endswith("norm_q.weight") or k.endswith("norm_k.weight") or k.endswith("norm3.weight"):
            v = 1.0 + 0.1 * v
        else:
            v *= 0.1
        state[k] = v
    return state


def tiny_umt5(folder: Path, d_model: int = 32, vocab_words: tuple[str, ...] = ()) -> None:
    """A random 2-layer UMT5 encoder and a WordLevel tokenizer (pad 0, eos 1, unk 2) as a HF folder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    corpus = ["a red ball moves left", "a blue square moves right over the green field", *vocab_words]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(folder))
    cfg = UMT5Config(
        vocab_size=tok.get_vocab_size(), d_model=d_model, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    UMT5EncoderModel(cfg).eval().save_pretrained(str(folder))
