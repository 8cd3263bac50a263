"""The io room: reading model directories (HF checkpoints and the converted layout), the HF
key map, the draft-LoRA adapter reader and the tokenizer. ``convert_weights`` builds on it."""
