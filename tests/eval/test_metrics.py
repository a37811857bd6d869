"""Metrics against independent references: scipy sqrtm FID, a direct numpy IS, brute-force k-NN precision/recall."""
import math

import numpy as np
import pytest
import scipy.linalg

from arjax.eval import metrics


def _features(rng, n, d, shift=0.0):
  mix = rng.normal(size=(d, d)) / math.sqrt(d)
  return rng.normal(size=(n, d)) @ mix + shift


def _scipy_fd(mu1, s1, mu2, s2):
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_frechet_distance_matches_scipy_sqrtm():
  rng = np.random.default_rng(0)
  a, b = _features(rng, 600, 32), _features(rng, 500, 32, shift=0.3) * 1.2
  mu1, s1 = metrics.feature_stats(a)
  mu2, s2 = metrics.feature_stats(b)
  np.testing.assert_allclose(mu1, a.mean(0))
  np.testing.assert_allclose(s1, np.cov(a, rowvar=False))
  fd, ref = metrics.frechet_distance(mu1, s1, mu2, s2), _scipy_fd(mu1, s1, mu2, s2)
  assert ref > 1.0
  assert abs(fd - ref) <= 1e-6 * abs(ref), (fd, ref)
  assert abs(metrics.frechet_distance(mu2, s2, mu1, s1) - ref) <= 1e-6 * abs(ref)


def test_frechet_distance_of_a_set_with_itself_is_zero():
  rng = np.random.default_rng(1)
  mu, sigma = metrics.feature_stats(_features(rng, 400, 64))
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_frechet_distance_singular_covariance_warns_and_regularises():
  rng = np.random.default_rng(2)
  a, b = _features(rng, 20, 48), _features(rng, 30, 48, shift=0.1)  # N < D: rank-deficient covariances
  (mu1, s1), (mu2, s2) = metrics.feature_stats(a), metrics.feature_stats(b)
  with pytest.warns(RuntimeWarning, match="singular covariance"):
    fd = metrics.frechet_distance(mu1, s1, mu2, s2, eps=1e-6)
  eye = 1e-6 * np.eye(48)
  ref = _scipy_fd(mu1, s1 + eye, mu2, s2 + eye)
  assert np.isfinite(fd) and abs(fd - ref) <= 1e-6 * abs(ref), (fd, ref)


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="sigma2"):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def test_inception_score_matches_direct_numpy():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(100, 7)) * 3
  mean, std = metrics.inception_score(logits, splits=4)
  scores = []
  for part in np.split(logits, 4):
    p = np.exp(part) / np.exp(part).sum(1, keepdims=True)
    py = p.mean(0)
    kl = [sum(p[i, j] * math.log(p[i, j] / py[j]) for j in range(7)) for i in range(len(p))]
    scores.append(math.exp(np.mean(kl)))
  np.testing.assert_allclose([mean, std], [np.mean(scores), np.std(scores)], rtol=1e-10)
  # one-hot confident predictions spread over C classes give IS = C; constant predictions give 1
  assert metrics.inception_score(np.eye(5)[np.arange(50) % 5] * 50, splits=1)[0] == pytest.approx(5, rel=1e-6)
  assert metrics.inception_score(np.zeros((20, 5)), splits=2)[0] == pytest.approx(1.0)


def _brute_pr(real, fake, k):
  def radii(x):
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

  def inside(q, ref, r):
    d = np.sqrt(((q[:, None] - ref[None]) ** 2).sum(-1))
    return np.mean([(d[i] <= r).any() for i in range(len(q))])

  return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_matches_brute_force_knn(k):
  rng = np.random.default_rng(4 + k)
  real = rng.normal(size=(70, 5))
  fake = np.concatenate([rng.normal(size=(40, 5)) * 0.5, rng.normal(size=(25, 5)) + 4])  # half on-manifold
  got = metrics.precision_recall(real, fake, k=k, chunk=16)
  ref = _brute_pr(real, fake, k)
  assert 0.2 < ref[0] < 0.9 and 0.05 < ref[1] < 0.95, ref  # the sets are neither disjoint nor identical
  np.testing.assert_allclose(got, ref, atol=1e-12)
  assert metrics.precision_recall(real, real, k=k) == (1.0, 1.0)


def test_bits_per_dim():
  # a uniform 8-bit model: 8 bits per dim, whatever the number of dims
  n_dims = 5 * 4 * 4 * 3
  assert metrics.bits_per_dim(n_dims * math.log(256), n_dims) == pytest.approx(8.0)
  with pytest.raises(ValueError, match="num_dims"):
    metrics.bits_per_dim(1.0, 0)


def test_stats_npz_roundtrip_and_errors(tmp_path):
  rng = np.random.default_rng(5)
  mu, sigma = metrics.feature_stats(rng.normal(size=(50, 6)))
  path = metrics.save_stats(str(tmp_path / "ref.npz"), mu, sigma, feature_net="shapes_judge", num_examples=50)
  with np.load(path, allow_pickle=False) as f:  # the pytorch-fid / ADM layout: plain 'mu' and 'sigma'
    assert f["mu"].dtype == np.float64 and f["sigma"].shape == (6, 6) and str(f["feature_net"]) == "shapes_judge"
  mu2, sigma2 = metrics.load_stats(path, dim=6)
  np.testing.assert_array_equal(mu2, mu)
  np.testing.assert_array_equal(sigma2, sigma)
  with pytest.raises(ValueError, match="D = 7"):
    metrics.load_stats(path, dim=7)
  np.savez(tmp_path / "bad.npz", mean=mu)
  with pytest.raises(ValueError, match="'mu'"):
    metrics.load_stats(str(tmp_path / "bad.npz"))
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    metrics.load_stats(str(tmp_path / "missing.npz"))
