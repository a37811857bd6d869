"""One process of the multi-host evaluation test (spawned by test_distributed.py; not a test itself).

  python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON
Runs a 'fid' evaluator (fid, is, pr) with a noise "model" and a random feature net on 2 CPU devices per
process and writes the metrics and the sample indices this process generated.
"""
import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

NUM_SAMPLES, BATCH = 60, 8  # 8 batches, the last one partial


@jax.jit
def _noise_images(params, labels, rng):
  x = jax.random.normal(rng, (labels.shape[0], 8, 8, 3)) * params["w"] + (labels % 7)[:, None, None, None] * 0.1 - 0.8
  return jnp.tanh(x)


class NoiseModel:
  """sample(): noise images; num_classes is large so the label of sample i is i itself."""
  num_classes = 10**6

  def __init__(self):
    self.seen = []

  def sample(self, params, cond, rng, *, scale=1.0):
    labels = cond["label"]
    self.seen.append(np.asarray(labels))
    return _noise_images(params, labels, rng) * scale


def random_feature_net(weights, data_cfg):
  from arjax.eval import evaluators
  key1, key2 = jax.random.split(jax.random.PRNGKey(7))
  w1, w2 = jax.random.normal(key1, (192, 16)) / 14, jax.random.normal(key2, (16, 10))

  @jax.jit
  def fn(images):
    pool = jnp.tanh(images.reshape(images.shape[0], -1) @ w1)
    return dict(pool=pool, logits=pool @ w2)

  return evaluators.FeatureNet("random", fn)


def main(process_id, num_processes, port, out):
  if num_processes > 1:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)
  from arjax import config as config_lib
  from arjax.eval import evaluators
  evaluators.FEATURE_NETS["random"] = random_feature_net
  data_cfg = config_lib.base_config().data
  data_cfg.image_size = 8
  model = NoiseModel()
  evals = dict(fid=dict(type="fid", metrics=("fid", "is", "pr"), num_samples=NUM_SAMPLES, batch_size=BATCH,
                        feature_net="random", sample_opts=dict(scale=0.9), splits=3, k=3))
  (ev,) = evaluators.build_evaluators(evals, model, "/tmp/unused", data_cfg=data_cfg)
  result = ev.run({"w": jnp.float32(0.4)}, jax.random.PRNGKey(0), 1)
  seen = np.concatenate(model.seen)
  with open(out, "w") as f:
    json.dump(dict(result=result, seen=sorted(int(i) for i in seen if i < NUM_SAMPLES),
                   local_devices=jax.local_device_count(), process_count=jax.process_count()), f)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
