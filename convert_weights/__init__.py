"""Port NLD checkpoints between PyTorch/HF layout and nemodiff_jax parameter trees.

``python -m convert_weights`` is the command line (see ``__main__``); :func:`convert.convert_hf`,
:func:`export.export_hf` and :func:`jax_format.read_converted` are the library entry points.
"""

from nemodiff_jax.io.keymap import CheckpointError, ParamSpec, assemble_params, hf_param_specs, iter_hf_tensors  # noqa: F401
