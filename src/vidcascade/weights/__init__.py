"""Weight loading: checkpoint formats, key maps, bundles and manifests, LoRA, the model registry."""
