"""vidcascade: an inference engine for block-causal video diffusion models with Block Cascading."""

__version__ = "0.1.0"

# Public names, imported on first use so that `import vidcascade` stays free of model code.
_LAZY = {
    "load_model": ("weights.loading", "load_model"),
    "load_bundle": ("weights.registry", "load_bundle"),
    "Engine": ("engine.engine", "Engine"),
    "CascadeConfig": ("config", "CascadeConfig"),
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        module, attr = _LAZY[name]
        return getattr(import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'vidcascade' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
