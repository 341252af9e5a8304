"""vidcascade: an inference engine for block-causal video diffusion models with Block Cascading."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import vidcascade` stays free of model code; `vidcascade.load_model` imports it on use.
    if name == "load_model":
        from .weights.loading import load_model

        return load_model
    raise AttributeError(f"module 'vidcascade' has no attribute {name!r}")


__all__ = ["__version__", "load_model"]
