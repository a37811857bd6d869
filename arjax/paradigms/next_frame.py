"""Frame-level AR video (LongLive): a short window + frame sink, a streaming API with KV re-cache on a prompt
switch, streaming long tuning, INT8 weight-only inference.

A frame (the tokenizer's h*w latents, in patch x patch tokens; a VQ's code vectors, see CodeTokens) is the AR unit. Each frame is denoised jointly, ACDiT-style inside
the transformer (block_diffusion's linear flow path, t=0 noise, t=1 data, v-prediction): its noised tokens
attend to each other and to the cached clean frames; after the frame is solved, the clean frame runs once more at
t = 1 (LongLive's context update, its t = 0) to write its keys/values. Frame f attends to the sink frames
[0, sink) and the last `window` frames including itself (masks.window_sink(h*w, window, sink)); the stream keeps
them in a cache-v2 ring (sink + window frames), so memory and per-frame cost are constant. RoPE is 3D at
(absolute frame, row, col), so the stream length is unbounded. The prompt (a class label per frame) modulates
every token through AdaLN, clean context included, so cached keys/values depend on the prompt:
  * switch with re-cache: clear the cache and re-run the kept frames (sink + window) under the new prompt;
  * keep: only the next frames get the new prompt (the cache still holds old-prompt keys/values);
  * reset: an empty cache, frame 0 again (a new video).
Training (`model.train_mode`):
  * 'frame_ar': teacher forcing on clips, [clean frames ; noised frames] under masks.skip_window_sink;
  * 'long': streaming long tuning on clips longer than the training clip: the first T - window frames are rolled
    through the ring cache without gradients (each written frame is the clip's frame or, with probability
    long.self_prob, the model's own one-step reconstruction of it from time long.self_t; prompt switches in the clip
    re-cache), the cache is detached, and only the last `window` frames are supervised, frame by frame through the
    cache (switches inside re-cache too).
"""
from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from arjax import cache as cache_lib
from arjax import config as config_lib
from arjax import masks
from arjax.nn import layers
from arjax.nn import quant
from arjax.nn import rope
from arjax.nn.transformer import Transformer, TransformerConfig
from arjax.paradigms import block_diffusion, latent
from arjax.sampling import guidance, loop, ode
from arjax.tokenizers import vq as vq_lib

KEYS = ("width", "patch", "window", "sink", "frames", "flow", "transformer", "train_mode", "long")
LONG_KEYS = ("self_prob", "self_t")
TRAIN_MODES = ("frame_ar", "long")
UNBOUNDED = 1 << 30  # the ring's nominal length (token indices are int32)
# stream / sample options beyond guidance.DEFAULTS and loop.PRECISION (compute_dtype, int8, cache_dtype)
# (None: the config's value); full: frame-causal attention over a contiguous cache of max_frames; frames:
# sample()'s clip length
STREAM_OPTIONS = dict(steps=None, solver=None, full=False, max_frames=0, frames=None)
SWITCH_MODES = ("recache", "keep", "reset")


class FrameNet(nn.Module):
  """(tokens [B,L,C] of F frames, labels [B,F], t [B,L]) -> velocity [B,L,C] and the cache; the label of a frame
  and the flow time modulate its tokens (AdaLN), clean context included (t = 1)."""
  token_dim: int
  conditioner: object
  tcfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BLC, labels_BF, t_BL, mask, positions, cache=None):
    w, (b, f) = self.tcfg.width, labels_BF.shape
    h = layers.dense(w, (None, "embed"), name="in")(x_BLC)
    c_BFD = self.conditioner.embedder(w, name="cond")({"label": labels_BF.reshape(-1)}).reshape(b, f, w)
    cond_BLD = jnp.repeat(c_BFD, x_BLC.shape[1] // f, axis=1) + layers.TimeEmbed(w, name="time")(t_BL * 1000.0)
    h, cache = Transformer(self.tcfg, name="transformer")(h, mask, positions=positions, cond_BC=cond_BLD, cache=cache,
                                                          whole_unit=cache is not None)
    v = layers.dense(self.token_dim, ("embed", None), init=nn.initializers.zeros, name="out")(h)
    return v.astype(jnp.float32), cache


class CodeTokens:
  """A VQ tokenizer seen as continuous: its unit code vectors (x sqrt(code_dim): unit variance per dim) in; out, the
  image of the nearest code of each token."""
  kind = "continuous"

  def __init__(self, vq):
    self.vq, self.grid, self.latent_dim = vq, vq.grid, vq.net.code_dim

  def encode(self, params, images_BHW3):
    codes = self.vq._apply(params, vq_lib.VQNet.lookup, self.vq.encode(params, images_BHW3))
    return codes * np.sqrt(self.latent_dim)

  def decode(self, params, z_BhwD):
    idx = vq_lib.nearest_code(z_BhwD.reshape(-1, self.latent_dim), params["codebook"])
    return self.vq.decode(params, idx.reshape(z_BhwD.shape[:-1]))


def ring_slot(frame, sink: int, window: int):
  """Slot of a frame in a sink + window ring of frames (the cache's rule, counted in frames)."""
  return jnp.where(frame < sink, frame, sink + (frame - sink) % window)


class NextFrame(latent.LatentParadigm):
  """LongLive-style frame AR over per-frame VAE latents (an arjax.interfaces.Paradigm with `stream`)."""

  def __init__(self, cfg, tokenizer, tokenizer_params):
    if tokenizer.kind == "discrete":  # a VQ: denoise its code vectors, decode the nearest codes
      tokenizer = CodeTokens(tokenizer)
    super().__init__(cfg, tokenizer, tokenizer_params, KEYS)
    block_diffusion.check_flow(cfg)
    config_lib.check_keys(cfg.long, LONG_KEYS, "model.long")
    self.window, self.sink, self.frames = int(cfg.window), int(cfg.sink), int(cfg.frames)
    if self.window < 1:
      raise ValueError(f"model.window={cfg.window}: expected >= 1 frame")
    if not 0 <= self.sink <= self.window:
      raise ValueError(f"model.sink={cfg.sink}: expected 0 <= sink <= window ({cfg.window}) frames")
    if self.frames < 1:
      raise ValueError(f"model.frames={cfg.frames}: expected >= 1")
    if cfg.train_mode not in TRAIN_MODES:
      raise ValueError(f"model.train_mode={cfg.train_mode!r}: expected one of {TRAIN_MODES}")
    self.patch = int(cfg.patch)
    if self.patch < 1 or self.grid[0] % self.patch or self.grid[1] % self.patch:
      raise ValueError(f"model.patch={cfg.patch}: expected a divisor of the latent grid {self.grid}")
    self.latent_grid, self.latent_dim = self.grid, self.token_dim
    self.grid = (self.grid[0] // self.patch, self.grid[1] // self.patch)  # tokens: patch x patch latent cells
    self.token_dim *= self.patch ** 2
    self.tpf = self.grid[0] * self.grid[1]  # tokens per frame
    self.tcfg = TransformerConfig.make(cfg.transformer, width=cfg.width, adaln=True, pos="rope3d")
    self.net = FrameNet(self.token_dim, self.conditioner, self.tcfg)
    self.mask = masks.window_sink(self.tpf, self.window, self.sink)
    self.grid_pos = rope.grid_positions(*self.grid)  # [tpf, 2] (row, col), numpy

  # ---- shapes and positions
  def positions(self, first, n: int):
    """RoPE positions [n * tpf, 3] (absolute frame, row, col) of frames first .. first + n - 1 (first may be traced)."""
    frame_L = jnp.repeat(first + jnp.arange(n), self.tpf)
    return jnp.concatenate([frame_L[:, None], jnp.tile(jnp.asarray(self.grid_pos), (n, 1))], 1)

  def tokens(self, latent_BThwC):
    """Latents [B, T, h, w, C] -> tokens [B, T * tpf, patch * patch * C] (raster order of patches)."""
    b, t = latent_BThwC.shape[:2]
    (gh, gw), p = self.grid, self.patch
    x = latent_BThwC.reshape(b, t, gh, p, gw, p, self.latent_dim).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t * self.tpf, self.token_dim)

  def check_labels(self, labels):
    """int32 labels; a ValueError for one outside [0, num_classes] (num_classes is the null prompt)."""
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    try:
      values = np.asarray(labels)
    except jax.errors.TracerArrayConversionError:  # traced (inside jit): checked where it is concrete
      values = np.zeros(0)
    if values.size and (values.min() < 0 or values.max() > self.num_classes):
      raise ValueError(f"label out of range: got values in [{int(values.min())}, {int(values.max())}], expected "
                       f"0 .. {self.num_classes - 1} (or {self.num_classes}, the null prompt)")
    return labels.astype(jnp.int32)

  # ---- the Trainable contract
  def preprocess(self, batch):
    """video [B,T,H,W,3] -> latent [B,T,h,w,C] (frozen tokenizer, per frame); labels pass through."""
    video = batch["video"]
    b, t = video.shape[:2]
    z = self.tokenizer.encode(self.tokenizer_params, video.reshape(b * t, *video.shape[2:]))
    return dict(latent=z.reshape(b, t, *z.shape[1:]), labels=batch["labels"], label=batch["label"])

  def init(self, rng, batch):
    del batch  # parameters do not depend on data (model.init(rng, None) works)
    x = jnp.zeros((1, 2 * self.tpf, self.token_dim))
    return self.net.init(rng, x, jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2 * self.tpf)),
                         masks.skip_window_sink(self.tpf, 1, self.window, self.sink),
                         jnp.concatenate([self.positions(0, 1)] * 2))["params"]

  def loss(self, params, batch, rng, train=True):
    if batch["latent"].ndim != 5:
      raise ValueError(f"batch['latent'] of shape {batch['latent'].shape}: expected [B, T, h, w, C] (preprocess)")
    k_drop, k_loss = jax.random.split(rng)
    labels = self.check_labels(batch["labels"])
    if train:  # label dropout per frame (the null prompt trains classifier-free guidance)
      labels = self.conditioner.drop({"label": labels.reshape(-1)}, k_drop)["label"].reshape(labels.shape)
    fn = self.frame_ar_loss if self.cfg.train_mode == "frame_ar" else self.long_loss
    mse = fn(params, self.tokens(batch["latent"].astype(jnp.float32)), labels, k_loss)
    return mse, dict(mse=mse)

  def frame_ar_loss(self, params, x1_BSC, labels_BT, rng):
    """Teacher forcing: velocity MSE of every noised frame given the clean frames it may see."""
    t_frames = labels_BT.shape[1]
    xt, t_BS, eps = block_diffusion.noised(x1_BSC, [self.tpf] * t_frames, rng)
    pos = self.positions(0, t_frames)
    v, _ = self.net.apply({"params": params}, jnp.concatenate([x1_BSC, xt], 1),
                          jnp.concatenate([labels_BT, labels_BT], 1), jnp.concatenate([jnp.ones_like(t_BS), t_BS], 1),
                          masks.skip_window_sink(self.tpf, t_frames, self.window, self.sink),
                          jnp.concatenate([pos, pos]))
    return jnp.mean(jnp.square(v[:, x1_BSC.shape[1]:] - (x1_BSC - eps)))

  def long_loss(self, params, x1_BSC, labels_BT, rng):
    """Streaming long tuning: roll the clip's first T - window frames through the ring (no gradient; written frames
    partly the model's own reconstructions), detach the cache, supervise the last window frame by frame."""
    b, t_frames = labels_BT.shape
    if t_frames <= self.window:
      raise ValueError(f"train_mode='long' needs clips longer than model.window={self.window}; got {t_frames} "
                       "frames (set data.frames)")
    frames_BTLC = x1_BSC.reshape(b, t_frames, self.tpf, self.token_dim)
    k_roll, k_sup = jax.random.split(rng)
    rollout = t_frames - self.window
    state = self.empty_state(b)
    frozen = jax.lax.stop_gradient(params)

    def roll(state, k):
      key = jax.random.fold_in(k_roll, k)
      state = self.switch_rows(frozen, state, labels_BT[:, k], k)
      x1 = frames_BTLC[:, k]
      t = jnp.full((b, self.tpf), self.cfg.long.self_t)
      eps = jax.random.normal(key, x1.shape)
      xt = self.cfg.long.self_t * x1 + (1 - self.cfg.long.self_t) * eps
      own = xt + (1 - self.cfg.long.self_t) * self.velocity(frozen, state.cache, xt, state.labels_B, t, k)
      use_own = jax.random.bernoulli(jax.random.fold_in(key, 1), self.cfg.long.self_prob, (b, 1, 1))
      return self.commit(frozen, state, jnp.where(use_own, own, x1), k), None

    state = jax.lax.scan(roll, state, jnp.arange(rollout))[0]
    state = jax.lax.stop_gradient(state)  # the detached cache (and kept frames)

    def supervise(state, k):
      key = jax.random.fold_in(k_sup, k)
      state = self.switch_rows(params, state, labels_BT[:, k], k)
      x1 = frames_BTLC[:, k]
      xt, t_BL, eps = block_diffusion.noised(x1, [self.tpf], key)
      v = self.velocity(params, state.cache, xt, state.labels_B, t_BL, k)
      return self.commit(params, state, x1, k), jnp.mean(jnp.square(v - (x1 - eps)))

    return jnp.mean(jax.lax.scan(supervise, state, jnp.arange(rollout, t_frames))[1])

  # ---- cached steps (pure; frame index k may be traced)
  def velocity(self, params, cache, x_BLC, labels_B, t_BL, k, mask=None):
    """The velocity of frame k's noised tokens over the cache (the cache with them written is dropped)."""
    return self.net.apply({"params": params}, x_BLC, labels_B[:, None], t_BL, mask or self.mask,
                          self.positions(k, 1), cache=self.at(cache, k))[0]

  def write(self, params, cache, x_BLC, labels_B, k, mask=None):
    """(velocity, cache): the clean frame k run at t = 1, its keys/values written at its sequence indices."""
    return self.net.apply({"params": params}, x_BLC, labels_B[:, None], jnp.ones(x_BLC.shape[:2]), mask or self.mask,
                          self.positions(k, 1), cache=self.at(cache, k))

  def at(self, cache, k):
    """The cache with its next sequence index at frame k (every row)."""
    return cache.replace(end_B=jnp.full_like(cache.end_B, k * self.tpf))

  def empty_state(self, rows: int, full_frames: int = 0, dtype=None):
    """A stream state of `rows` rows: the ring (sink + window frames), or a contiguous cache of full_frames; the
    cache in `dtype` (default: the cache dtype of an enclosing quant.compute, else f32)."""
    if full_frames:
      cache = self.tcfg.init_cache(rows, full_frames * self.tpf, dtype)
      kept = full_frames
    else:
      cache = self.tcfg.init_cache(rows, UNBOUNDED, dtype, window=self.window * self.tpf, sink=self.sink * self.tpf)
      kept = self.sink + self.window
    return StreamState(cache=cache, kept=jnp.zeros((rows, kept, self.tpf, self.token_dim)),
                       labels_B=jnp.full((rows,), self.num_classes, jnp.int32))

  def commit(self, params, state, x_BLC, k, mask=None):
    """The state with clean frame k written into the cache and the kept frames."""
    _, cache = self.write(params, state.cache, x_BLC, state.labels_B, k, mask)
    return state.replace(cache=cache, kept=jax.lax.dynamic_update_index_in_dim(state.kept, x_BLC,
                                                                                self.slot(state, k), 1))

  def slot(self, state, frame):
    """Where the kept frames hold `frame` (ring: the cache's rule in frames; contiguous: the frame)."""
    return frame if state.cache.window is None else ring_slot(frame, self.sink, self.window)

  def recache(self, params, state, labels_B, k, mask=None):
    """KV re-cache before frame k: an empty cache, then the kept frames (ring: the sink, then the last window; a
    contiguous cache: every frame), in order, re-run at t = 1 under labels_B."""
    ring = state.cache.window is not None
    state = state.replace(cache=cache_lib.reset(state.cache), labels_B=labels_B)

    def body(i, state):
      frame = jnp.where(i < self.sink, i, k - self.window + i - self.sink) if ring else i
      valid = (frame < k) & ((frame >= self.sink) | (i < self.sink)) if ring else frame < k
      x = jax.lax.dynamic_index_in_dim(state.kept, jnp.maximum(self.slot(state, frame), 0), 1, keepdims=False)
      return jax.lax.cond(valid, lambda s: self.commit(params, s, x, frame, mask), lambda s: s, state)

    return jax.lax.fori_loop(0, state.kept.shape[1], body, state)

  def switch_rows(self, params, state, labels_B, k, mask=None):
    """Rows whose label changes at frame k re-cache under it (training); the others keep their cache."""
    changed_B = (labels_B != state.labels_B) & (k > 0)
    pick = lambda a, b: jnp.where(changed_B.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
    return jax.lax.cond(jnp.any(changed_B),
                        lambda s: jax.tree.map(pick, self.recache(params, s, labels_B, k, mask), s),
                        lambda s: s, state.replace(labels_B=labels_B))

  def next_frame(self, params, state, k, rng, opts):
    """(tokens [B, tpf, C] of frame k solved from noise over the cache, the state with it committed).
    With guidance the state has [cond ; null] rows."""
    scale = None if opts["cfg_scale"] == 1.0 else opts["cfg_scale"]
    rows = state.labels_B.shape[0]
    b = rows if scale is None else rows // 2
    mask = self.stream_mask(opts)
    v_fn = lambda x, tau: self.velocity(params, state.cache, x, state.labels_B, jnp.full(x.shape[:2], tau), k, mask)
    k0, k1 = jax.random.split(rng)
    x0 = opts["temperature"] * jax.random.normal(k0, (b, self.tpf, self.token_dim))
    x = ode.integrate(guidance.guided(v_fn, scale), x0, opts["steps"] or self.cfg.flow.steps,
                      solver=opts["solver"] or self.cfg.flow.solver, rng=k1,
                      sde_scale=self.cfg.flow.get("sde_scale", 1.0))
    return x, self.commit(params, state, jnp.concatenate([x] * (rows // b)), k, mask)

  def stream_mask(self, opts):
    """window_sink, or frame-causal attention over everything (opts.full: a contiguous cache)."""
    return masks.window_sink(self.tpf, UNBOUNDED, 0) if opts["full"] else self.mask

  def decode(self, x_BLC):
    """Frame tokens [B, tpf, C] -> images [B, H, W, 3] in [-1, 1]."""
    (gh, gw), p = self.grid, self.patch
    z = x_BLC.reshape(-1, gh, gw, p, p, self.latent_dim).transpose(0, 1, 3, 2, 4, 5)
    z = z.reshape(-1, *self.latent_grid, self.latent_dim)
    return jnp.clip(self.tokenizer.decode(self.tokenizer_params, z), -1, 1)

  # ---- sampling and streaming
  @loop.sampler(STREAM_OPTIONS)
  def sample(self, params, cond, rng, opts):
    """The last frame [B, H, W, 3] in [-1, 1] of a stream of opts.frames (default model.frames) frames."""
    if opts["full"]:
      raise ValueError("sample() streams over the ring; use stream(..., full=True, max_frames=N)")
    labels_B = self.check_labels(self.conditioner.get(cond))
    rows = rows_for(labels_B, self.num_classes, opts)
    state = self.empty_state(rows.shape[0]).replace(labels_B=rows)

    def body(k, carry):
      state, _ = carry
      x, state = self.next_frame(params, state, k, jax.random.fold_in(rng, k), opts)
      return state, x

    x0 = jnp.zeros((labels_B.shape[0], self.tpf, self.token_dim))
    return self.decode(jax.lax.fori_loop(0, opts["frames"] or self.frames, body, (state, x0))[1])

  def stream(self, params, label_B, rng, **opts):
    """A Stream: next(n) -> frames [B, n, H, W, 3] in [-1, 1]; switch(label_B); cache_bytes()."""
    return Stream(self, params, label_B, rng, loop.options(opts, STREAM_OPTIONS))


@flax.struct.dataclass
class StreamState:
  """The cache, the kept clean frames (what re-cache re-runs) [rows, kept, tpf, C], the current labels [rows]."""
  cache: cache_lib.KVCache
  kept: jax.Array
  labels_B: jax.Array


def rows_for(labels_B, num_classes: int, opts):
  """The label rows of a stream: labels, or [labels ; null] with guidance."""
  if opts["cfg_scale"] == 1.0:
    return labels_B
  return jnp.concatenate([labels_B, jnp.full_like(labels_B, num_classes)])


class Stream:
  """A live video stream of a NextFrame model (see the module docstring for switch modes)."""

  def __init__(self, model: NextFrame, params, label_B, rng, opts):
    labels = model.check_labels(label_B)
    if labels.ndim != 1:
      raise ValueError(f"label_B of shape {labels.shape}: expected [B]")
    if opts["full"] and opts["max_frames"] < 1:
      raise ValueError("full=True (frame-causal attention over a contiguous cache) needs max_frames >= 1")
    self.model, self.opts, self.rng, self.frame = model, opts, rng, 0
    dtype = quant.dtype_of(opts["compute_dtype"])
    # quantised once; params and state committed to one device (else the second step compiles again)
    device = jax.local_devices()[0]
    params = nn.meta.unbox(params)  # model.init's params carry logical axis boxes
    self.params = jax.device_put(quant.for_inference(params, dtype, opts["int8"], opts["int8_head"]), device)
    self.weight_bytes = quant.weight_bytes(self.params)
    self.state = model.empty_state(2 * labels.shape[0] if opts["cfg_scale"] != 1.0 else labels.shape[0],
                                   opts["max_frames"] if opts["full"] else 0,
                                   quant.cache_dtype_of(opts["cache_dtype"], dtype))
    self.state = jax.device_put(self.state.replace(labels_B=rows_for(labels, model.num_classes, opts)), device)
    statics = tuple(sorted((k, v) for k, v in opts.items() if k != "temperature"))
    self._step = jax.jit(functools.partial(_step, model, statics), donate_argnums=(1,))
    self._recache = jax.jit(functools.partial(_recache, model, statics), donate_argnums=(1,))

  def next(self, n: int = 1):
    """The next n frames [B, n, H, W, 3] in [-1, 1]."""
    if n < 1:
      raise ValueError(f"next(n={n}): expected n >= 1")
    if self.opts["full"] and self.frame + n > self.opts["max_frames"]:
      raise ValueError(f"full=True stream of max_frames={self.opts['max_frames']} cannot go to frame {self.frame + n}")
    out = []
    for _ in range(n):
      image, self.state = self._step(self.params, self.state, jnp.int32(self.frame),
                                     jax.random.fold_in(self.rng, self.frame), jnp.float32(self.opts["temperature"]))
      out.append(image)
      self.frame += 1
    return jnp.stack(out, 1)

  def switch(self, label_B, mode: str = "recache"):
    """A new prompt from the next frame: 'recache' (KV re-cache), 'keep' (no re-cache) or 'reset' (a new video)."""
    if mode not in SWITCH_MODES:
      raise ValueError(f"switch mode={mode!r}: expected one of {SWITCH_MODES}")
    labels = self.model.check_labels(label_B)
    b = self.state.labels_B.shape[0] // (1 if self.opts["cfg_scale"] == 1.0 else 2)
    if labels.shape != (b,):
      raise ValueError(f"label_B of shape {labels.shape}: expected [{b}] (the stream's batch)")
    rows = rows_for(labels, self.model.num_classes, self.opts)
    if mode == "recache":
      self.state = self._recache(self.params, self.state, rows, jnp.int32(self.frame))
    elif mode == "keep":
      self.state = self.state.replace(labels_B=rows)
    else:
      self.state = self.state.replace(cache=cache_lib.reset(self.state.cache), labels_B=rows)
      self.frame = 0

  def cache_bytes(self, allocated: bool = False) -> int:
    """Bytes of keys/values the cache holds (slots holding a token; allocated=True: all slots)."""
    cache = self.state.cache
    per_slot = sum(a.nbytes for a in jax.tree.leaves((cache.k, cache.v))) // cache.size
    return per_slot * (cache.size if allocated else int(jnp.max(jnp.sum(cache.pos_BS >= 0, 1))))


def _step(model, statics, params, state, k, rng, temperature):
  opts = dict(statics, temperature=temperature)
  x, state = model.next_frame(params, state, k, rng, opts)
  return model.decode(x), state


def _recache(model, statics, params, state, labels, k):
  return model.recache(params, state, labels, k, model.stream_mask(dict(statics)))

