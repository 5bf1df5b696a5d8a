"""jax_dae: accelerator-first denoising autoencoders in JAX/Flax."""

__version__ = "0.1.0"
