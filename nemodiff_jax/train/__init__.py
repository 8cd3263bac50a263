"""Training: the joint AR + diffusion objective (docs/ALGORITHMS.md, "Training objective"), the loop, draft-LoRA training
(docs/ALGORITHMS.md, "Draft LoRA"), export to an HF directory, and the embedded-model evaluation."""
