"""Text encoders: our MiniLM vs transformers' BertModel, the umT5 wrapper vs a direct UMT5 run,
the Wan T5 key converter, and the per-prompt memo."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vidcascade.text import minilm as text_minilm
from vidcascade.text.encoder import MemoTextEncoder, TextEncoder, zero_rows_past_length
from vidcascade.text.umt5 import (
    UMT5TextEncoder,
    clean_prompt,
    hf_to_wan_t5,
    resolve_umt5_folders,
    umt5_config_from_wan,
    wan_t5_to_hf,
)

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAS_MINILM = importlib.util.find_spec(text_minilm.MINILM_PACKAGE) is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs vidcascade[wan]")
needs_minilm = pytest.mark.skipif(not (HAS_MINILM and HAS_TRANSFORMERS), reason="needs vidcascade[text,wan]")

PROMPTS = [
    "A cat walking on the beach at sunset, cinematic lighting.",
    "dog",
    "",
    "Aerial view of a futuristic city with flying cars and neon signs, rain, night, 4k",
]


# ----------------------------------------------------------------------------- common interface


class _CountingEncoder:
    text_dim = 3
    text_len = 4

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def encode(self, prompts: list[str]) -> torch.Tensor:
        self.calls.append(list(prompts))
        vals = torch.tensor([float(len(p)) for p in prompts])
        return vals[:, None, None].expand(-1, self.text_len, self.text_dim).clone()


def test_memo_encodes_each_prompt_once_and_evicts_lru() -> None:
    inner = _CountingEncoder()
    memo = MemoTextEncoder(inner, max_entries=2)
    assert isinstance(memo, TextEncoder) and isinstance(inner, TextEncoder)
    out = memo.encode(["ab", "abc", "ab"])
    assert inner.calls == [["ab", "abc"]]
    assert out.shape == (3, 4, 3) and out[:, 0, 0].tolist() == [2.0, 3.0, 2.0]
    memo.encode(["ab"])  # hit; "abc" becomes least recent
    memo.encode(["x"])  # miss; evicts "abc"
    memo.encode(["abc"])
    assert inner.calls[1:] == [["x"], ["abc"]]
    assert (memo.hits, memo.misses, len(memo)) == (2, 4, 2)
    out[0] = -1.0  # the caller's tensor is not the cached one
    assert memo.encode(["ab"])[0, 0, 0] == 2.0


def test_zero_rows_past_length() -> None:
    h = torch.full((2, 4, 3), float("nan"))
    out = zero_rows_past_length(h, torch.tensor([1, 4]))
    assert (out[0, 1:] == 0).all() and out[0, 0].isnan().all() and out[1].isnan().all()


# ----------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm_pair() -> tuple[text_minilm.MiniLMTextEncoder, torch.nn.Module]:
    from transformers import BertModel

    ours = text_minilm.MiniLMTextEncoder.from_package(text_len=32)
    folder = text_minilm.find_minilm_folder()
    theirs = BertModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()
    return ours, theirs


def _bert_hidden(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


@needs_minilm
def test_minilm_matches_transformers_bert(minilm_pair) -> None:
    ours, theirs = minilm_pair
    out = ours.encode(PROMPTS)  # [4, 32, 384]
    ids, lengths = ours.tokenize(PROMPTS)
    assert out.shape == (4, 32, 384) and out.dtype == torch.float32
    assert lengths.tolist()[1:3] == [3, 2]  # [CLS] dog [SEP]; [CLS] [SEP]
    mask = (torch.arange(32)[None, :] < lengths[:, None]).long()
    batched = _bert_hidden(theirs, ids, mask)
    worst = 0.0
    for b, n in enumerate(lengths.tolist()):
        alone = _bert_hidden(theirs, ids[b : b + 1, :n], mask[b : b + 1, :n])[0]  # unpadded reference
        torch.testing.assert_close(out[b, :n], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[b, :n], batched[b, :n], atol=1e-5, rtol=0)
        worst = max(worst, (out[b, :n] - alone).abs().max().item())
        assert (out[b, n:] == 0.0).all()
        assert (out[b, :n].abs().sum(-1) > 0).all()
    print(f"MiniLM max |ours - BertModel| = {worst:.2e}")


@needs_minilm
def test_minilm_truncates_keeping_sep(minilm_pair) -> None:
    _, theirs = minilm_pair
    short = text_minilm.MiniLMTextEncoder.from_package(text_len=6)
    ids, lengths = short.tokenize([PROMPTS[3], "dog"])
    assert ids.shape == (2, 6) and lengths.tolist() == [6, 3]
    assert ids[0, 0].item() == short.tokenizer.token_to_id("[CLS]")
    assert ids[0, -1].item() == short.tokenizer.token_to_id("[SEP]")
    out = short.encode([PROMPTS[3], "dog"])
    assert out.shape == (2, 6, 384) and (out[1, 3:] == 0).all()
    torch.testing.assert_close(
        out[0], _bert_hidden(theirs, ids[:1], torch.ones_like(ids[:1]))[0], atol=1e-5, rtol=0
    )


def test_minilm_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"vidcascade\[text\]"):
        text_minilm.MiniLMTextEncoder.from_package()


def test_bert_config_validates() -> None:
    with pytest.raises(ValueError, match="divisible"):
        text_minilm.BertConfig(hidden_size=10, num_attention_heads=3)


# ----------------------------------------------------------------------------- umT5

UMT5_TEXT_LEN = 12
UMT5_CORPUS = [
    "a cat walks on the beach at sunset",
    "a dog runs in the park with a red ball",
    "the city at night with neon lights and rain & fog",
    "aerial view of mountains and a lake",
]


def _tiny_umt5(folder: Path) -> tuple[torch.nn.Module, object]:
    """Tiny random UMT5 + a WordLevel tokenizer (pad 0, eos 1, unk 2) saved as HF folders."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(UMT5_CORPUS, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(folder))
    cfg = UMT5Config(
        vocab_size=tok.get_vocab_size(), d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = UMT5EncoderModel(cfg).eval()
    model.save_pretrained(str(folder))
    return model, fast


@pytest.fixture(scope="module")
def umt5_setup(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("umt5")
    model, tokenizer = _tiny_umt5(folder)
    return folder, model, tokenizer


UMT5_PROMPTS = [
    "a cat walks on the beach",
    "  the  CITY at\nnight &amp;amp; rain ",  # cleaned to "the CITY at night & rain"
    "dog",
    "a dog runs in the park with a red ball at sunset on the beach near the city",  # truncated
]


@needs_transformers
def test_umt5_wrapper_matches_direct_unpadded_run(umt5_setup) -> None:
    folder, model, tokenizer = umt5_setup
    enc = UMT5TextEncoder.from_folder(folder, text_len=UMT5_TEXT_LEN)
    out = enc.encode(UMT5_PROMPTS)
    assert out.shape == (4, UMT5_TEXT_LEN, 32) and out.dtype == torch.float32
    worst = 0.0
    for b, prompt in enumerate(UMT5_PROMPTS):
        ids = tokenizer(clean_prompt(prompt), truncation=True, max_length=UMT5_TEXT_LEN)["input_ids"]
        assert ids[-1] == 1  # EOS kept, also when truncated
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids])).last_hidden_state[0]  # [n, 32], no padding at all
        n = len(ids)
        torch.testing.assert_close(out[b, :n], ref, atol=1e-5, rtol=0)
        worst = max(worst, (out[b, :n] - ref).abs().max().item())
        assert (out[b, n:] == 0.0).all()
    assert [len(tokenizer(clean_prompt(p))["input_ids"]) for p in UMT5_PROMPTS[:3]] == [7, 7, 2]
    print(f"umT5 max |wrapper - direct| = {worst:.2e}")


def test_clean_prompt_like_wan() -> None:
    assert clean_prompt("  the  CITY at\nnight &amp;amp; rain ") == "the CITY at night & rain"
    assert clean_prompt("a\t\tb &lt;c&gt;") == "a b <c>"


@needs_transformers
def test_umt5_missing_files_error_lists_contents(tmp_path: Path, umt5_setup) -> None:
    with pytest.raises(FileNotFoundError, match="lacks the model .* and the tokenizer"):
        UMT5TextEncoder.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"lacks the model.*notes\.txt.*tokenizer\.json"):
        resolve_umt5_folders(tmp_path)
    folder, _, _ = umt5_setup
    assert resolve_umt5_folders(folder) == (folder, folder)


def _wan_reference(sd: dict[str, torch.Tensor], ids: torch.Tensor, max_dist: int) -> torch.Tensor:
    """Wan's T5Encoder forward for one unpadded sequence, written from its description (t5.py)."""

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def bucket(rel: torch.Tensor, num_buckets: int) -> torch.Tensor:  # bidirectional T5 buckets
        half = num_buckets // 2
        exact = half // 2
        base = (rel > 0).long() * half
        rel = rel.abs()
        large = exact + (torch.log(rel.float() / exact) / math.log(max_dist / exact) * (half - exact)).long()
        return base + torch.where(rel < exact, rel, large.clamp(max=half - 1))

    n = ids.shape[0]
    x = sd["token_embedding.weight"][ids]  # [n, D]
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # key - query
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(layers):
        p = f"blocks.{i}."
        table = sd[p + "pos_embedding.embedding.weight"]  # [buckets, H]
        heads = table.shape[1]
        bias = table[bucket(rel, table.shape[0])].permute(2, 0, 1)  # [H, n, n]
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{c}.weight"]).view(n, heads, -1).transpose(0, 1) for c in "qkv")
        att = torch.softmax(q @ k.transpose(1, 2) + bias, dim=-1)  # no 1/sqrt(d) in T5
        x = x + F.linear((att @ v).transpose(0, 1).reshape(n, -1), sd[p + "attn.o.weight"])
        h = rms(x, sd[p + "norm2.weight"])
        gate = F.gelu(F.linear(h, sd[p + "ffn.gate.0.weight"]), approximate="tanh")
        x = x + F.linear(F.linear(h, sd[p + "ffn.fc1.weight"]) * gate, sd[p + "ffn.fc2.weight"])
    return rms(x, sd["norm.weight"])


@needs_transformers
def test_wan_t5_converter_round_trip_and_semantics(tmp_path: Path, umt5_setup) -> None:
    folder, model, tokenizer = umt5_setup
    hf_state = model.state_dict()
    wan_state = hf_to_wan_t5(hf_state)
    assert "blocks.1.ffn.gate.0.weight" in wan_state and "token_embedding.weight" in wan_state
    back = wan_t5_to_hf(wan_state)
    assert back.keys() == hf_state.keys()
    assert all(torch.equal(back[k], hf_state[k]) for k in hf_state)
    cfg = umt5_config_from_wan(wan_state)
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
        assert cfg[name] == getattr(model.config, name), name

    # Wan folder layout: the .pth with T5 names plus google/umt5-xxl/ for the tokenizer.
    torch.save({k: v.clone() for k, v in wan_state.items()}, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    tokenizer.save_pretrained(str(tmp_path / "google" / "umt5-xxl"))
    from_wan = UMT5TextEncoder.from_folder(tmp_path, text_len=UMT5_TEXT_LEN)
    from_hf = UMT5TextEncoder.from_folder(folder, text_len=UMT5_TEXT_LEN)
    assert from_wan.model.encoder.embed_tokens.weight is from_wan.model.shared.weight
    torch.testing.assert_close(from_wan.encode(UMT5_PROMPTS), from_hf.encode(UMT5_PROMPTS), atol=0, rtol=0)

    # The mapping means the same computation: Wan's forward on Wan names == HF UMT5 on HF names.
    ids = tokenizer(UMT5_PROMPTS[0])["input_ids"]
    with torch.no_grad():
        ref = _wan_reference(wan_state, torch.tensor(ids), model.config.relative_attention_max_distance)
    torch.testing.assert_close(from_hf.encode(UMT5_PROMPTS[:1])[0, : len(ids)], ref, atol=1e-5, rtol=0)
