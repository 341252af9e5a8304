"""The networks as pure nn.Modules: the Wan DiT, RoPE, attention masks, the Wan VAE, streaming decode."""
