"""nemodiff-jax: Nemotron-Labs-Diffusion tri-mode language models in pure-functional JAX/Flax."""

from .api import Model, abstract_params, count_params, forward, forward_logits, init_params, load  # noqa: F401
from .cache import KVCache  # noqa: F401
from .config import NLDConfig  # noqa: F401
from .masks import AttentionPolicy  # noqa: F401

__version__ = "0.1.0"
