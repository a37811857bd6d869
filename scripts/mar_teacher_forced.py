"""Teacher-forced MAR on real `shapes` latents (issue 18): does the trained backbone use its context?

  python scripts/mar_teacher_forced.py runs/mar [--num 256]

For 256 held-out images, a random fraction of latent tokens is given (known) and the others are drawn by the head
in one pass from the backbone's features. Prints, per fraction known: the rms error of the drawn tokens and the
judge accuracy of the decoded images. The VAE's own reconstruction accuracy is the ceiling. A backbone that reads its
context gets lower error and higher accuracy as more is known.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paradigm_table  # noqa: E402
from arjax import demo, registry  # noqa: E402
from arjax.eval import evaluators, judge  # noqa: E402
from arjax.train import checkpoint  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdir")
  p.add_argument("--num", type=int, default=256)
  a = p.parse_args()
  config = paradigm_table.load_config(paradigm_table.read_run(a.workdir)["cfg"])
  model = registry.build_model(config)
  if config.model.name != "masked_ar":
    raise ValueError(f"{a.workdir} is a {config.model.name!r} run; this check is for masked_ar")
  params = checkpoint.load_params(os.path.join(a.workdir, "checkpoints"), ema=True)
  judge_params = evaluators.build_evaluators({"judge": dict(type="judge", num_samples=a.num)}, model, a.workdir,
                                             data_cfg=config.data)[0].judge_params
  real, labels = demo.real_test_set(config.data, a.num)
  labels = np.asarray(labels["label"] if isinstance(labels, dict) else labels)
  tok, tok_params = model.tokenizer, model.tokenizer_params
  x_BNC = tok.encode(tok_params, jnp.asarray(real)).reshape(a.num, model.num_tokens, -1)
  accuracy = lambda x: float(np.mean(judge.predict(judge_params, np.asarray(
      tok.decode(tok_params, x.reshape(a.num, *model.grid, -1))))["label"] == labels))
  print(f"VAE reconstruction: judge accuracy {accuracy(x_BNC):.3f}")
  cond = {"label": jnp.asarray(labels, jnp.int32)}
  for frac in (0.0, 0.2, 0.5, 0.8, 0.95):
    known_BN = jax.random.uniform(jax.random.PRNGKey(1), (a.num, model.num_tokens)) < frac
    z = model.net.apply({"params": params["net"]}, x_BNC, known_BN, cond)
    drawn = model.head.sample(params["head"], z.reshape(-1, z.shape[-1]), jax.random.PRNGKey(2)).reshape(x_BNC.shape)
    rms = float(jnp.sqrt(jnp.mean(jnp.square(drawn - x_BNC), -1))[~known_BN].mean())
    print(f"{frac:.0%} known: drawn-token rms error {rms:.3f}, judge accuracy "
          f"{accuracy(jnp.where(known_BN[..., None], x_BNC, drawn)):.3f}", flush=True)


if __name__ == "__main__":
  main()
