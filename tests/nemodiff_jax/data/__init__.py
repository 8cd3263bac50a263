"""Tests of nemodiff_jax.data."""
