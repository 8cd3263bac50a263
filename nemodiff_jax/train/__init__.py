"""Training: the joint AR + diffusion objective (NLD_SPEC 4), the loop, draft-LoRA training
(NLD_SPEC 3.4), export to an HF directory, and the embedded-model evaluation."""
