"""Sample-quality metrics on feature sets: Fréchet distance, Inception Score, precision / recall, bits-per-dim.

Feature statistics live in `.npz` files with keys `mu` [D] and `sigma` [D, D] (float64), the layout
pytorch-fid, torch-fidelity and ADM's reference batches use, so reference statistics computed elsewhere
(e.g. ImageNet pool3 stats) can be used directly.
"""
from __future__ import annotations

import functools
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np


def feature_stats(features_ND):
  """(mu [D], sigma [D, D]) in float64; sigma is the unbiased (N-1) covariance."""
  x = np.asarray(features_ND, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"features of shape {x.shape}: expected [N, D] with N >= 2")
  return x.mean(0), np.cov(x, rowvar=False)


def _sym_eigh(a):
  w, v = np.linalg.eigh((a + a.T) / 2)
  return w, v


def _is_singular(w):
  """True when a covariance's eigenvalues w show it rank-deficient (numpy's matrix_rank tolerance)."""
  return w.min() <= w.max() * len(w) * np.finfo(np.float64).eps


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """|mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), in float64.

  tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)): a symmetric PSD eigenproblem, stable where a general
  sqrtm of the non-symmetric S1 S2 is not. A singular covariance gets eps*I added to both (with a warning).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[0]
  for name, mu, sigma in (("1", mu1, sigma1), ("2", mu2, sigma2)):
    if mu.shape != (d,) or sigma.shape != (d, d):
      raise ValueError(f"mu{name} {mu.shape} / sigma{name} {sigma.shape}: expected [{d}] and [{d}, {d}]")
  w1, v1 = _sym_eigh(sigma1)
  w2, _ = _sym_eigh(sigma2)
  if _is_singular(w1) or _is_singular(w2):
    warnings.warn(f"frechet_distance: singular covariance (dim {d}; fewer samples than dimensions?); "
                  f"adding {eps:g}*I to both covariances", RuntimeWarning, stacklevel=2)
    sigma1, sigma2 = sigma1 + eps * np.eye(d), sigma2 + eps * np.eye(d)
    w1, v1 = _sym_eigh(sigma1)
  sqrt1 = (v1 * np.sqrt(np.maximum(w1, 0))) @ v1.T
  m = sqrt1 @ sigma2 @ sqrt1
  tr_covmean = np.sqrt(np.maximum(np.linalg.eigvalsh((m + m.T) / 2), 0)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def inception_score(logits_NC, splits: int = 10):
  """(mean, std) over `splits` folds of exp(E_x KL(p(y|x) || p(y))), from class logits, in float64."""
  logits = np.asarray(logits_NC, np.float64)
  if logits.ndim != 2 or logits.shape[0] < splits:
    raise ValueError(f"logits of shape {logits.shape}: expected [N, C] with N >= splits={splits}")
  logp = logits - logits.max(1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(1, keepdims=True))
  scores = []
  for part in np.array_split(logp, splits):
    log_py = np.log(np.exp(part).mean(0))
    scores.append(math.exp((np.exp(part) * (part - log_py)).sum(1).mean()))
  return float(np.mean(scores)), float(np.std(scores))


@jax.jit
def _sq_dists(a_MD, b_ND):
  """Squared Euclidean distances [M, N] (full-precision matmul)."""
  ab = jnp.dot(a_MD, b_ND.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum((a_MD * a_MD).sum(1)[:, None] + (b_ND * b_ND).sum(1)[None, :] - 2 * ab, 0)


@functools.partial(jax.jit, static_argnums=2)
def _kth_sq_dist(a_MD, b_ND, k: int):
  """Squared distance from each row of a to its k-th smallest in b (index k counts the 0 to itself)."""
  return -jax.lax.top_k(-_sq_dists(a_MD, b_ND), k + 1)[0][:, k]


@jax.jit
def _inside_any(a_MD, b_ND, radii_sq_N):
  """For each row of a: does it lie within radius of at least one row of b."""
  return (_sq_dists(a_MD, b_ND) <= radii_sq_N[None, :]).any(1)


def _chunked(fn, a, *args, chunk: int):
  return np.concatenate([np.asarray(fn(a[i:i + chunk], *args)) for i in range(0, len(a), chunk)])


def knn_radii_sq(features_ND, k: int = 3, chunk: int = 1024):
  """Squared distance of each feature to its k-th nearest neighbour in the same set (itself excluded)."""
  x = jnp.asarray(features_ND, jnp.float32)
  if not 1 <= k < x.shape[0]:
    raise ValueError(f"k={k} nearest neighbours need 1 <= k < N={x.shape[0]}")
  return _chunked(lambda a: _kth_sq_dist(a, x, k), x, chunk=chunk)


def precision_recall(real_ND, fake_ND, k: int = 3, chunk: int = 1024):
  """(precision, recall) with k-NN manifolds (Kynkäänniemi et al. 2019).

  precision: fraction of fake features inside the real manifold (the union of balls around each real
  feature reaching its k-th nearest real neighbour); recall: the same with the roles swapped.
  """
  real, fake = jnp.asarray(real_ND, jnp.float32), jnp.asarray(fake_ND, jnp.float32)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"real {real.shape} / fake {fake.shape}: expected [N, D] and [M, D]")
  real_r, fake_r = jnp.asarray(knn_radii_sq(real, k, chunk)), jnp.asarray(knn_radii_sq(fake, k, chunk))
  precision = _chunked(_inside_any, fake, real, real_r, chunk=chunk).mean()
  recall = _chunked(_inside_any, real, fake, fake_r, chunk=chunk).mean()
  return float(precision), float(recall)


def psnr(rec_BHWC, x_BHWC):
  """Mean per-image PSNR (dB) on the [0, 1] scale of images given in [-1, 1] (rec is clipped)."""
  err = (jnp.clip(rec_BHWC.astype(jnp.float32), -1, 1) - x_BHWC.astype(jnp.float32)) / 2
  mse_B = jnp.mean(jnp.square(err), axis=(1, 2, 3))
  return jnp.mean(-10 * jnp.log10(jnp.maximum(mse_B, 1e-10)))


def bits_per_dim(nll_nats_sum: float, num_dims: int) -> float:
  """Bits per dimension from a negative log-likelihood in nats summed over `num_dims` dimensions."""
  if num_dims <= 0:
    raise ValueError(f"num_dims={num_dims}: expected > 0 (examples * pixels * channels)")
  return float(nll_nats_sum) / (num_dims * math.log(2))


def save_stats(path: str, mu, sigma, **meta):
  """Writes reference statistics (`mu`, `sigma` float64, plus string/number metadata) to an .npz."""
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
    raise ValueError(f"mu {mu.shape} / sigma {sigma.shape}: expected [D] and [D, D]")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    np.savez(f, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in meta.items()})
  return path


def load_stats(path: str, dim: int | None = None):
  """(mu, sigma) float64 from an .npz with keys `mu` [D] and `sigma` [D, D] (checked against `dim`)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"reference statistics file {path!r} not found")
  with np.load(path, allow_pickle=False) as f:
    missing = {"mu", "sigma"} - set(f.files)
    if missing:
      raise ValueError(f"{path!r} has keys {sorted(f.files)}; expected 'mu' [D] and 'sigma' [D, D]")
    mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
  d = mu.shape[0] if mu.ndim == 1 else -1
  if sigma.shape != (d, d) or (dim is not None and d != dim):
    raise ValueError(f"{path!r}: mu {mu.shape}, sigma {sigma.shape}; expected [D] and [D, D] with "
                     f"D = {dim if dim is not None else 'len(mu)'}")
  return mu, sigma
