"""Teacher-forced MAR on real `shapes` latents (issue 18): does the trained backbone use its context?

  python scripts/mar_teacher_forced.py runs/mar [--num 256]

For 256 held-out images, a random fraction of latent tokens is given (known) and the others are drawn by the head
in one pass from the backbone's features. Prints, per fraction known: the rms error of one drawn token, the rms error
of the mean of --draws draws (an estimate of the head's conditional mean) and the judge accuracy of the decoded
images. The VAE's own reconstruction accuracy is the ceiling. A backbone that reads its context gets lower error and
higher accuracy as more is known. Note that one draw from a perfect model is an independent sample of the true
conditional: its rms error is sqrt(2) x the conditional std, not 0. The mean of the draws is the figure to compare
with the context-only baselines printed first (held-out ridge regression of a token on its position, and on its
8 neighbours + position).
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
  p.add_argument("--draws", type=int, default=8)
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
  for name, rms in neighbour_baselines(np.asarray(x_BNC).reshape(a.num, *model.grid, -1)).items():
    print(f"baseline, ridge regression on {name}: held-out rms error {rms:.3f}")
  cond = {"label": jnp.asarray(labels, jnp.int32)}
  for frac in (0.0, 0.2, 0.5, 0.8, 0.95):
    known_BN = jax.random.uniform(jax.random.PRNGKey(1), (a.num, model.num_tokens)) < frac
    z = model.net.apply({"params": params["net"]}, x_BNC, known_BN, cond)
    draw = lambda key: model.head.sample(params["head"], z.reshape(-1, z.shape[-1]), key).reshape(x_BNC.shape)
    drawn_KBNC = jnp.stack([draw(k) for k in jax.random.split(jax.random.PRNGKey(2), a.draws)])
    rms = lambda y: float(jnp.sqrt(jnp.mean(jnp.square(y - x_BNC)[~known_BN])))
    print(f"{frac:.0%} known: drawn-token rms error {rms(drawn_KBNC[0]):.3f}, mean of {a.draws} draws "
          f"{rms(drawn_KBNC.mean(0)):.3f}, judge accuracy "
          f"{accuracy(jnp.where(known_BN[..., None], x_BNC, drawn_KBNC[0])):.3f}", flush=True)


def neighbour_baselines(z_BhwC, ridge: float = 1e-2) -> dict:
  """Held-out rms error of ridge regressions predicting each token from its position (one-hot), and from its 8
  neighbours (zero-padded) + position; fitted on the first half of the images, scored on the second."""
  b, h, w, c = z_BhwC.shape
  zp = np.pad(z_BhwC, ((0, 0), (1, 1), (1, 1), (0, 0)))
  near = [zp[:, 1 + i:1 + i + h, 1 + j:1 + j + w] for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)]
  pos = np.broadcast_to(np.eye(h * w).reshape(1, h, w, h * w), (b, h, w, h * w))
  y = z_BhwC.reshape(-1, c)
  n = (b // 2) * h * w
  out = {}
  for name, parts in (("position", [pos]), ("8 neighbours + position", near + [pos])):
    x = np.concatenate(parts, -1).reshape(b * h * w, -1)
    coef = np.linalg.solve(x[:n].T @ x[:n] + ridge * np.eye(x.shape[1]), x[:n].T @ y[:n])
    out[name] = float(np.sqrt(np.mean(np.square(x[n:] @ coef - y[n:]))))
  return out


if __name__ == "__main__":
  main()
