"""Port NLD checkpoints between PyTorch/HF layout and nemodiff_jax parameter trees.

``python -m convert_weights`` is the command line (see ``__main__``); :func:`convert.convert_hf`,
:func:`export.export_hf` are the library entry points. The key map and the readers it shares with
the library's loader (:mod:`nemodiff_jax.io`: ``keymap``, ``hf_read``, ``jax_format.read_converted``,
``adapter``) live there; this package imports them, the library never imports this package.
"""

from nemodiff_jax.io.keymap import CheckpointError, ParamSpec, assemble_params, hf_param_specs, iter_hf_tensors  # noqa: F401
