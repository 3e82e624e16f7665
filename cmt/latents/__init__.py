"""Latent space: the autoencoder (a diffusers ``AutoencoderKL``, fetched, read from disk or trained), the two latent
conventions, latent datasets (docs/latent.md 4), and the authors' latent LPIPS and its backbone (docs/latent.md 8.5).
"""
