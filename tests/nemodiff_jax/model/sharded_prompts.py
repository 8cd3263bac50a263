"""Prompts and mode settings shared by the sharding and multi-host workers (no imports, so the
workers can set XLA_FLAGS before jax loads): four held-out task prompts of the embedded model
(``<bos> prompt`` ids from ``build_task_dataset("test", 4)``), which it answers in 16-28 tokens."""

PROMPTS = [
    [1, 381, 33, 298, 285, 293, 298, 287, 282, 299, 282, 287, 286, 300, 301, 296, 282, 291, 291, 287, 299, 282, 283, 280, 304],
    [1, 377, 33, 271, 270, 272, 275, 274, 271, 276, 270, 273, 272, 278, 272, 274, 274, 270, 281, 271, 271, 304],
    [1, 383, 285, 332, 297, 33, 285, 285, 268, 298, 286, 299, 295, 300, 292, 292, 264, 285, 285, 285, 301, 301, 304],
    [1, 382, 272, 33, 289, 265, 292, 297, 266, 296, 284, 304],
]
PROMPTS = PROMPTS + PROMPTS[::-1]  # 8 rows, so an 8-way data axis splits them
NEW_TOKENS = 32
MODES = {
    "ar": {},
    "diffusion": dict(block_length=8, threshold=0.9),
    "linear_spec": dict(block_length=8),
    "quadratic_spec": dict(block_length=4),
}
