"""Sparse autoencoders spliced into the hooked pass: their latents become nodes (see README, SAE latents)."""
