"""Reference feature statistics (mu, sigma) of a dataset split, written as an .npz (pytorch-fid / ADM layout):

  python scripts/fid_stats.py --data shapes --split test --num_examples 10000 --out stats/shapes_test.npz
  python scripts/fid_stats.py --data tfds:imagenet2012 --split validation --image_size 256 \
      --feature_net inception --weights pt_inception-2015-12-05-6726825d.pth --num_examples 50000 --out in256.npz
  python scripts/fid_stats.py --data folder:/data/imgs --feature_net inception --weights W.pth --out ref.npz

--data is a data name as in config.data.name ('shapes', 'tfds:<name>', 'folder:<path>'). Use the file as
`reference=` of a 'fid' evaluator. Runs on all processes with --multihost (jax.distributed.initialize()).
"""
from __future__ import annotations

from absl import app, flags

flags.DEFINE_string("data", "shapes", "Data name: shapes | tfds:<name> | folder:<path>.")
flags.DEFINE_string("split", "test", "Dataset split.")
flags.DEFINE_integer("num_examples", 10_000, "Number of examples (the first ones of the split).")
flags.DEFINE_integer("image_size", 32, "Image side the data is resized/cropped to.")
flags.DEFINE_list("colours", ["red", "blue"], "Colours of the embedded shapes dataset.")
flags.DEFINE_string("feature_net", "shapes_judge", "inception | shapes_judge.")
flags.DEFINE_string("weights", "", "Feature network weights (pytorch-fid .pth for inception; judge .npz).")
flags.DEFINE_integer("batch_size", 100, "Feature batch size.")
flags.DEFINE_string("out", None, "Output .npz path.", required=True)
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
FLAGS = flags.FLAGS


def compute_stats(data_cfg, split: str, num_examples: int, feature_net: str, weights: str, batch_size: int):
  """(mu, sigma) of the feature net's pool features on the first num_examples of the split."""
  from arjax.data import pipeline
  from arjax.eval import evaluators, metrics
  net = evaluators.load_feature_net(feature_net, weights, data_cfg)
  source = pipeline.make_source(data_cfg, split, num_examples)
  feats = evaluators.dataset_features(net, source, num_examples, batch_size)["pool"]
  return metrics.feature_stats(feats)


def main(argv):
  del argv
  import jax
  from arjax import config as config_lib
  from arjax.eval import metrics
  if FLAGS.multihost:
    jax.distributed.initialize()
  data_cfg = config_lib.base_config().data
  data_cfg.update(name=FLAGS.data, image_size=FLAGS.image_size, colours=tuple(FLAGS.colours))
  mu, sigma = compute_stats(data_cfg, FLAGS.split, FLAGS.num_examples, FLAGS.feature_net, FLAGS.weights,
                            FLAGS.batch_size)
  if jax.process_index() == 0:
    metrics.save_stats(FLAGS.out, mu, sigma, feature_net=FLAGS.feature_net, data=FLAGS.data, split=FLAGS.split,
                       num_examples=FLAGS.num_examples, image_size=FLAGS.image_size)
    print(f"wrote {FLAGS.out}: mu {mu.shape}, sigma {sigma.shape}, {FLAGS.num_examples} examples of "
          f"{FLAGS.data}:{FLAGS.split} with {FLAGS.feature_net}")


if __name__ == "__main__":
  app.run(main)
