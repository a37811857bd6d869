"""Evaluators end to end with stand-in models: samples that are real `shapes` images must score high, noise must
score near chance; FID / PR / BPD values must equal a direct computation on the same images."""
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arjax import config as config_lib
from arjax import evaluate
from arjax.data import pipeline, shapes
from arjax.eval import build_evaluators, evaluators, judge, metrics
from arjax.train import checkpoint as ckpt_lib

SIZE, BANK = 16, 256


@pytest.fixture(scope="module")
def data_cfg():
  cfg = config_lib.base_config().data
  cfg.image_size = SIZE
  return cfg


@pytest.fixture(scope="module")
def bank(data_cfg):
  """The first BANK test examples: images in [-1,1], attributes, captions."""
  src = pipeline.make_source(data_cfg, "test", BANK)
  exs = [src[i] for i in range(BANK)]
  model_exs = [pipeline.to_model_example(e) for e in exs]
  return dict(image=np.stack([e["image"] for e in model_exs]), caption=np.stack([e["caption"] for e in model_exs]),
              **{k: np.array([e[k] for e in exs]) for k in ("label", "shape", "colour", "position")})


class LookupJudge:
  """A 1-nearest-neighbour judge over the bank (exact on bank images, arbitrary on anything else)."""

  def __init__(self, bank):
    self.bank = bank

  def predict(self, params, images):
    d = ((np.asarray(images)[:, None] - self.bank["image"][None]) ** 2).sum((2, 3, 4))
    nearest = d.argmin(1)
    return {k: self.bank[k][nearest] for k in ("label", "shape", "colour", "position")}


class BankModel:
  """sample(): for each label (or caption) a real bank image with that label (caption); or uniform noise."""
  preprocess = staticmethod(lambda batch: batch)
  num_classes = 8

  def __init__(self, bank, noise=False):
    self.bank, self.noise, self.outputs = bank, noise, []

  def sample(self, params, cond, rng, *, temperature=1.0):
    (key,) = cond  # a cond pytree: {'label': [B]} or {'caption': [B, Lc]}
    cond, seed = np.asarray(cond[key]), np.asarray(jax.random.randint(rng, (), 0, 2**31 - 1))
    rs = np.random.default_rng(int(seed))
    if self.noise:
      images = rs.uniform(-1, 1, (len(cond), SIZE, SIZE, 3)).astype(np.float32)
    elif cond.ndim == 2:  # captions -> the first bank image with that caption
      images = np.stack([self.bank["image"][np.flatnonzero((self.bank["caption"] == c).all(1))[0]] for c in cond])
    else:
      images = np.stack([self.bank["image"][rs.choice(np.flatnonzero(self.bank["label"] == c))] for c in cond])
    self.outputs.append(images)
    return jnp.asarray(images)


def random_feature_net(weights, data_cfg):
  w = jax.random.normal(jax.random.PRNGKey(3), (SIZE * SIZE * 3, 12)) / 20
  fn = jax.jit(lambda x: dict(pool=jnp.tanh(x.reshape(len(x), -1) @ w), logits=x.reshape(len(x), -1) @ w))
  return evaluators.FeatureNet("random", fn)


@pytest.fixture
def lookup_judge(monkeypatch, bank):
  monkeypatch.setattr(evaluators, "_judge_params", lambda weights, data_cfg: (LookupJudge(bank), None))


@pytest.fixture
def random_net(monkeypatch):
  monkeypatch.setitem(evaluators.FEATURE_NETS, "random", random_feature_net)


def _run(cfg, model, data_cfg):
  (ev,) = build_evaluators(dict(e=cfg), model, "/tmp/unused", data_cfg=data_cfg)
  return ev.run({}, jax.random.PRNGKey(0), 0)


def test_judge_class_accuracy_real_vs_noise(lookup_judge, bank, data_cfg):
  cfg = dict(type="judge", num_samples=60, batch_size=16, sample_opts=dict(temperature=1.0))
  real = _run(cfg, BankModel(bank), data_cfg)
  noise = _run(cfg, BankModel(bank, noise=True), data_cfg)
  assert real == dict(accuracy=1.0)
  assert noise["accuracy"] < 0.35, noise  # chance is 1/8


def test_sampling_evaluators_use_the_experiments_sample_settings_unless_given(lookup_judge, bank, data_cfg):
  seen = []

  class Recording(BankModel):
    def sample(self, params, cond, rng, **opts):
      seen.append(opts)
      return super().sample(params, cond, rng, temperature=opts.get("temperature", 1.0))

  sample_cfg = ml_collections.ConfigDict(dict(temperature=0.5, cfg_scale=3.0))
  for entry, want in [(dict(), dict(temperature=0.5, cfg_scale=3.0)), (dict(sample_opts={}), {})]:
    (ev,) = build_evaluators(dict(j=dict(type="judge", num_samples=8, batch_size=8, **entry)), Recording(bank),
                             "/tmp/x", data_cfg=data_cfg, sample_cfg=sample_cfg)
    ev.run({}, jax.random.PRNGKey(0), 0)
    assert seen[-1] == want


def test_judge_labels_cycle_over_classes(lookup_judge, bank, data_cfg):
  model = BankModel(bank)
  _run(dict(type="judge", num_samples=20, batch_size=8), model, data_cfg)
  labels = LookupJudge(bank).predict(None, np.concatenate(model.outputs))["label"]
  np.testing.assert_array_equal(labels, np.arange(24) % 8)  # 3 batches of 8, the last padded


def test_judge_caption_attribute_accuracy(lookup_judge, bank, data_cfg):
  cfg = dict(type="judge", cond="caption", num_samples=40, batch_size=16)
  real = _run(cfg, BankModel(bank), data_cfg)
  noise = _run(cfg, BankModel(bank, noise=True), data_cfg)
  assert real == dict(shape_accuracy=1.0, colour_accuracy=1.0, position_accuracy=1.0, all_accuracy=1.0)
  assert noise["all_accuracy"] < 0.2 and noise["position_accuracy"] < 0.4, noise


def test_fid_pr_is_equal_direct_computation(random_net, bank, data_cfg, tmp_path):
  n = 50
  cfg = dict(type="fid", metrics=("fid", "is", "pr"), num_samples=n, batch_size=16, feature_net="random", splits=5)
  model, noise = BankModel(bank), BankModel(bank, noise=True)
  got, got_noise = _run(cfg, model, data_cfg), _run(cfg, noise, data_cfg)
  net = random_feature_net("", data_cfg)
  fake = net.fn(jnp.asarray(np.concatenate(model.outputs)[:n]))
  real = net.fn(jnp.asarray(bank["image"][:n]))
  fid = metrics.frechet_distance(*metrics.feature_stats(fake["pool"]), *metrics.feature_stats(real["pool"]))
  assert got["fid"] == pytest.approx(fid, rel=1e-6)  # batches of 16 vs one batch: GPU sums differ by ~1e-8
  assert (got["precision"], got["recall"]) == metrics.precision_recall(real["pool"], fake["pool"], k=3)
  assert (got["is"], got["is_std"]) == pytest.approx(metrics.inception_score(fake["logits"], 5), rel=1e-9)
  assert got["fid"] < 0.2 * got_noise["fid"] and got["precision"] > got_noise["precision"] + 0.3, (got, got_noise)
  # a stats .npz as the reference gives the same FID
  path = metrics.save_stats(str(tmp_path / "ref.npz"), *metrics.feature_stats(real["pool"]))
  model.outputs.clear()
  assert _run(dict(cfg, metrics=(), reference=path), model, data_cfg) == dict(fid=pytest.approx(fid, rel=1e-9))


def test_shapes_judge_feature_net_uses_the_judge(tmp_path, bank, data_cfg):
  net = judge.JudgeNet(num_colours=2)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
  path = str(tmp_path / "judge.npz")
  judge.save_params(path, params, colours=("red", "blue"))
  feat = evaluators.load_feature_net("shapes_judge", path, data_cfg)
  out = feat.fn(bank["image"][:32])
  np.testing.assert_allclose(out["pool"], judge.features(params, bank["image"][:32]), rtol=1e-6)
  np.testing.assert_array_equal(out["logits"].argmax(1), judge.predict(params, bank["image"][:32])["label"])


class GaussianModel:
  """A likelihood 'model': per-pixel N(0, 1) NLL summed per example; preprocess scales images by 2."""

  def preprocess(self, batch):
    return dict(batch, image=batch["image"] * 2)

  def nll(self, params, batch):
    x = batch["image"]
    return (0.5 * x**2 + 0.5 * math.log(2 * math.pi)).sum((1, 2, 3)) * params["scale"]


def test_bpd_equals_direct_computation(bank, data_cfg):
  n = 37  # 3 batches of 16, the last one padded
  (ev,) = build_evaluators(dict(bpd=dict(type="bpd", num_samples=n, batch_size=16)), GaussianModel(), "/tmp/x",
                           data_cfg=data_cfg)
  got = ev.run({"scale": jnp.float32(1.5)}, None, 0)
  x = bank["image"][:n].astype(np.float64) * 2
  want = 1.5 * (0.5 * x**2 + 0.5 * math.log(2 * math.pi)).sum() / (n * SIZE * SIZE * 3 * math.log(2))
  assert got == dict(bpd=pytest.approx(want, rel=1e-5))


def test_config_errors(data_cfg, bank):
  with pytest.raises(ValueError, match="bpd.*has no nll"):
    build_evaluators(dict(bpd=dict(type="bpd")), BankModel(bank), "/tmp/x", data_cfg=data_cfg)
  with pytest.raises(ValueError, match="type='fdi'"):
    build_evaluators(dict(f=dict(type="fdi")), BankModel(bank), "/tmp/x")
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['num_sample'\] in config.evals.f"):
    build_evaluators(dict(f=dict(type="fid", num_sample=10)), BankModel(bank), "/tmp/x")
  with pytest.raises(ValueError, match="feature_net='nope'"):
    build_evaluators(dict(f=dict(type="fid", feature_net="nope")), BankModel(bank), "/tmp/x", data_cfg=data_cfg)
  with pytest.raises(ValueError, match="needs weights"):
    build_evaluators(dict(f=dict(type="is", feature_net="inception")), BankModel(bank), "/tmp/x", data_cfg=data_cfg)
  with pytest.raises(ValueError, match="evals.b needs the data config"):
    build_evaluators(dict(b=dict(type="bpd", num_samples=4)), GaussianModel(), "/tmp/x")


def test_evaluate_cli_writes_json_and_tensorboard(tmp_path, monkeypatch, data_cfg):
  config = config_lib.base_config()
  config.data.image_size = SIZE
  config.evals.bpd = dict(type="bpd", num_samples=1000, batch_size=8)
  monkeypatch.setattr("arjax.registry.build_model", lambda cfg: GaussianModel())
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"))
  ckpt.save(7, dict(ema_params={"scale": jnp.float32(2.0)}, params={"scale": jnp.float32(1.0)}))
  ckpt.wait()
  results = evaluate.evaluate(config, str(tmp_path / "run"), num_samples=8)
  x = np.stack([pipeline.to_model_example(shapes.example(i, "test", image_size=SIZE))["image"] for i in range(8)]) * 2
  want = 2.0 * (0.5 * x.astype(np.float64)**2 + 0.5 * math.log(2 * math.pi)).sum() / (x.size * math.log(2))
  assert results == {"bpd/bpd": pytest.approx(want, rel=1e-5)}
  saved = json.loads((tmp_path / "run" / "eval" / "step7.json").read_text())
  assert saved["step"] == 7 and saved["metrics"] == results
  assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
  with pytest.raises(ValueError, match=r"--only names \['fid'\]"):
    evaluate.select_evals(config.evals, only=["fid"])
