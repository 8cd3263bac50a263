"""The int8 numbers of the README ("Bigger than one device"): parameter bytes, logit error of
int8 against bf16, held-out accuracy and TPF per mode of the embedded model in bf16 and bf16+int8.
Not a test (slow): ``python -m tests.nemodiff_jax.model.measure_int8 [N_EXAMPLES=40]``."""
import json
import sys
import time

import numpy as np
import nemodiff_jax as nd
from nemodiff_jax.model.quantize import param_bytes
from nemodiff_jax.data.tasks import build_task_dataset
from nemodiff_jax.train.evaluate_embedded import _hf_tokenizer, evaluate
from nemodiff_jax.data.batches import prompt_ids
n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
bf = nd.load("embedded", dtype="bfloat16")
q = nd.load("embedded", dtype="bfloat16", quantize="int8")
fp = nd.load("embedded")
out = {"bytes": {"fp32": param_bytes(fp.params), "bf16": param_bytes(bf.params), "bf16+int8": param_bytes(q.params)}}
ex = build_task_dataset("test", 16)
tok = _hf_tokenizer(bf)
err, agree = [], []
for p, a, _ in ex:
    ids = np.array([prompt_ids(tok, p + a)])
    r, g = np.asarray(nd.forward_logits(bf, ids)), np.asarray(nd.forward_logits(q, ids))
    err.append(np.abs(g - r).max() / r.std())
    agree.append((g.argmax(-1) == r.argmax(-1)).mean())
out["logit_err_vs_bf16_max_over_std"] = float(np.max(err))
out["argmax_agree_vs_bf16"] = float(np.mean(agree))
print(json.dumps(out), flush=True)
examples = build_task_dataset("test", n)
modes = ["ar", "diffusion", "diffusion+lora", "linear_spec", "linear_spec+lora", "quadratic_spec"]
for name, m in [("bf16", bf), ("bf16+int8", q)]:
    t = time.time()
    res = evaluate(m, examples, modes, log=lambda *a: None)
    out[name] = {k: {kk: v[kk] for kk in ("accuracy", "tpf", "identical_to_ar") if kk in v} for k, v in res.items()}
    print(name, time.time() - t, json.dumps(out[name]), flush=True)
print("RESULT " + json.dumps(out))
