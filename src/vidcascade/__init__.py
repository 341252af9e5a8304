"""vidcascade: an inference engine for block-causal video diffusion models with Block Cascading."""

__version__ = "0.1.0"
