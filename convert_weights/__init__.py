"""Port NLD checkpoints between PyTorch/HF layout and nemodiff_jax parameter trees."""

from .keymap import ParamSpec, assemble_params, hf_param_specs, iter_hf_tensors  # noqa: F401
