import pytest

from vidcascade.config import (
    MODEL_PRESETS,
    CacheConfig,
    CascadeConfig,
    ConfigError,
    ModelConfig,
    SamplingConfig,
    model_preset,
)


def test_presets_have_reference_shapes():
    m = MODEL_PRESETS["wan-1.3b"]
    assert (m.dim, m.ffn_dim, m.num_heads, m.num_layers, m.head_dim) == (1536, 8960, 12, 30, 128)
    assert m.num_params() == 1_418_996_800  # reference §1.4
    m = MODEL_PRESETS["wan-14b"]
    assert (m.dim, m.ffn_dim, m.num_heads, m.num_layers) == (5120, 13824, 40, 40)
    assert m.num_params() == 14_288_491_584


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: ModelConfig(dim=100, num_heads=12), "divisible by num_heads"),
        (lambda: ModelConfig(num_layers=0), "num_layers must be a positive integer, got 0"),
        (lambda: SamplingConfig(steps=(500, 750)), "strictly decreasing"),
        (lambda: SamplingConfig(steps=(1200,)), "got 1200"),
        (lambda: SamplingConfig(sampler="ddim"), "sampler must be one of renoise, euler; got 'ddim'"),
        (lambda: SamplingConfig(shift=0), "shift must be > 0"),
        (lambda: CacheConfig(window_frames=0), "window_frames"),
        (lambda: CacheConfig(sink_frames=-1), "sink_frames"),
        (lambda: CacheConfig(sink_bias=-0.5), "sink_bias"),
        (lambda: CacheConfig(sink_bias=float("nan")), "sink_bias"),
        (lambda: CacheConfig(sink_bias="2"), "sink_bias"),
        (lambda: CascadeConfig(level=1, lag=2), "either level or lag"),
        (lambda: CascadeConfig(attention="full"), "attention must be one of causal, bidirectional"),
        (lambda: CascadeConfig(level=-1), "level must be >= 0"),
        (lambda: model_preset("wan-7b"), "unknown model preset 'wan-7b'"),
    ],
)
def test_bad_values_name_the_value(make, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_resolve_lag():
    assert CascadeConfig(level=0).resolve_lag(4) == 5
    assert CascadeConfig(level=4).resolve_lag(4) == 1
    assert CascadeConfig(lag=2).resolve_lag(4) == 2
    assert CascadeConfig().resolve_lag(3) == 1
    with pytest.raises(ConfigError, match="level must be in 0..4 for 4 steps, got 5"):
        CascadeConfig(level=5).resolve_lag(4)
    with pytest.raises(ConfigError, match="lag must be in 1..4"):
        CascadeConfig(lag=9).resolve_lag(3)
