"""Latent space: the autoencoder (a diffusers ``AutoencoderKL``, fetched, read from disk or trained), the two latent
conventions, and latent datasets (docs/latent.md 4)."""
