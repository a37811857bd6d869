"""Interleaved (Orthus) paradigm: soft-VQ -> hard VQ as tau -> 0, the training sequence and its per-position losses,
cached interleaved generation == a teacher-forced recompute of the final sequence (text, slots, CFG), exactly N
slots between <boi> and <eoi>, bad prompts."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from arjax.data.pipeline import encode_caption
from arjax.paradigms import interleaved as il
from arjax.tokenizers.vq import VQTokenizer

TOKENIZER = VQTokenizer(ml_collections.ConfigDict(dict(name="vq", image_size=8, ch=8, ch_mult=(1, 2, 2),
                                                       codebook_size=16, code_dim=4, norm_groups=4)))  # 2x2 grid
TOK_PARAMS = nn.meta.unbox(TOKENIZER.init(jax.random.PRNGKey(0), dict(image=jnp.zeros((1, 8, 8, 3)))))
N = 4


def make(image_head="diffusion", feed="soft_vq"):
  cfg = ml_collections.ConfigDict(dict(
      name="interleaved", num_classes=8, cond="caption", label_drop=0.0, width=32, max_text=6, image_head=image_head,
      feed=feed, tau=0.05, transformer=dict(depth=2, heads=2, impl="xla"),
      head=dict(kind="diffusion", width=16, depth=1, steps=3, prediction="v", train_steps=100)))
  model = il.Interleaved(cfg, TOKENIZER, TOK_PARAMS)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), None))
  # random (non-zero) weights everywhere, so that every output depends on the context
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  return model, params


def test_soft_vq_tends_to_the_hard_vq_embedding():
  model, params = make()
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(2), (64, 4))
  net = params["net"]
  apply = lambda fn, *a: model.net.apply({"params": net}, *a, method=fn)
  # independent reference: brute-force nearest unit code by squared distance, its row of E
  codes = np.asarray(net["codebook"]) / np.linalg.norm(net["codebook"], axis=-1, keepdims=True)
  z = np.asarray(x) / 2.0
  nearest = np.argmin(((z[:, None] - codes[None]) ** 2).sum(-1), axis=1)
  want = np.asarray(net["code_embed"]["embedding"])[nearest]
  soft = lambda tau: np.asarray(apply(il.InterleavedNet.feed, x, tau))
  np.testing.assert_allclose(soft(1e-5), want, atol=1e-5)
  np.testing.assert_allclose(apply(il.InterleavedNet.hard_vq, x), want, atol=1e-6)
  assert np.abs(soft(1.0) - want).max() > 1e-2  # a warm softmax mixes codes
  # the codebook copy starts as the tokenizer's codebook
  fresh = nn.meta.unbox(model.init(jax.random.PRNGKey(0), None))
  np.testing.assert_array_equal(fresh["net"]["codebook"], TOK_PARAMS["codebook"])


def captions(*texts):
  return jnp.asarray(np.stack([encode_caption(t) for t in texts]))


@pytest.mark.parametrize("image_head", ["diffusion", "lm"])
def test_training_sequence_and_each_loss_touches_only_its_own_positions(image_head):
  model, params = make(image_head)
  x = jax.random.normal(jax.random.PRNGKey(3), (3, N, 4))
  codes = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
  c2i = jnp.array([True, False, True])
  seq, text_mask, start = model.train_seq(captions("ab", "xyz", ""), x, codes, c2i)
  img = lambda c: [il.IMG + (int(k) if image_head == "lm" else 0) for k in c]
  want = [[il.BOS, 97, 98, il.BOI, *img(codes[0]), il.EOI, il.EOS],
          [il.BOS, il.BOI, *img(codes[1]), il.EOI, 120, 121, 122, il.EOS],
          [il.BOS, il.BOI, *img(codes[2]), il.EOI, il.EOS]]
  for r, row in enumerate(want):
    np.testing.assert_array_equal(seq.tokens[r], row + [il.PAD] * (model.seq_len - len(row)))
  np.testing.assert_array_equal(start, [4, 2, 2])
  np.testing.assert_array_equal(seq.x[0, 4:4 + N], x[0])
  # text targets: everything but slots and padding; not the <eos> after an unconditional (dropped-caption) image
  np.testing.assert_array_equal(np.flatnonzero(text_mask[0]), [0, 1, 2, 3 + N, 4 + N])
  np.testing.assert_array_equal(np.flatnonzero(text_mask[1]), [0, 1 + N, 2 + N, 3 + N, 4 + N, 5 + N])
  np.testing.assert_array_equal(np.flatnonzero(text_mask[2]), [0, 1 + N])

  h, logits = model.outputs(params, seq)
  rng = jax.random.PRNGKey(4)
  text = model.text_loss(logits, seq, text_mask)
  nll = -jax.nn.log_softmax(logits[:, :-1])
  ref = np.mean([nll[r, t, seq.tokens[r, t + 1]] for r in range(3) for t in np.flatnonzero(text_mask[r])])
  np.testing.assert_allclose(text, ref, rtol=1e-5)
  image = model.image_loss(params, h, logits, seq, start, rng)
  image_pos = np.zeros(seq.tokens.shape, bool)
  for r in range(3):
    image_pos[r, int(start[r]) - 1:int(start[r]) - 1 + N] = True
  text_pos = np.pad(np.asarray(text_mask), ((0, 0), (0, 1)))
  zero = lambda a, where: jnp.where(jnp.asarray(where)[..., None], 0.0, a)
  # zeroing every other position leaves a loss unchanged; zeroing its own changes it
  np.testing.assert_allclose(model.text_loss(zero(logits, ~text_pos), seq, text_mask), text, rtol=1e-6)
  assert abs(model.text_loss(zero(logits, text_pos), seq, text_mask) - text) > 1e-3
  kept = lambda h_, l_: model.image_loss(params, h_, l_, seq, start, rng)
  np.testing.assert_allclose(kept(zero(h, ~image_pos), zero(logits, ~image_pos)), image, rtol=1e-6)
  assert abs(kept(zero(h, image_pos), zero(logits, image_pos)) - image) > 1e-4


def recompute_check(model, params, out, prompt_len, cfg_scale, steps):
  """Every generated token of `out` equals what a teacher-forced pass over the final sequence predicts (greedy
  text, DDIM from x_T = 0 for slots, guided by the recomputed unconditional <bos> <boi> x_<k> sequence)."""
  seq, length = out["seq"], np.asarray(out["length"])
  h, logits = model.outputs(params, seq)
  tokens, slot = np.asarray(seq.tokens), np.asarray(seq.slot)
  n_slots = 0
  for r in range(tokens.shape[0]):
    for i in range(prompt_len[r], length[r]):
      if slot[r, i] >= 0:
        n_slots += 1
        k = slot[r, i]
        if model.image_head == "diffusion":
          z = h[r, i - 1][None]
          if cfg_scale != 1.0:
            useq = il.Seq(*(a[r:r + 1, i - k - 2:i] for a in seq))
            useq = useq._replace(tokens=useq.tokens.at[0, 0].set(il.BOS))
            z = jnp.concatenate([z, model.outputs(params, useq)[0][0, -1][None]])
          want = model.head.sample(params["head"], z, jax.random.PRNGKey(0), guide_scale=None if cfg_scale == 1.0
                                   else cfg_scale, steps=steps, temperature=0.0, solver="ddim")[0]
          np.testing.assert_allclose(seq.x[r, i], want, atol=1e-4)
        else:
          lg = model._masked(logits[r, i - 1][None], True)
          if cfg_scale != 1.0:
            useq = il.Seq(*(a[r:r + 1, i - k - 2:i] for a in seq))
            useq = useq._replace(tokens=useq.tokens.at[0, 0].set(il.BOS))
            ul = model._masked(model.outputs(params, useq)[1][0, -1][None], True)
            lg = ul + cfg_scale * (lg - ul)
          assert tokens[r, i] == int(np.argmax(lg)), (r, i)
      elif slot[r, i - 1] == N - 1:
        assert tokens[r, i] == il.EOI
      else:
        assert tokens[r, i] == int(np.argmax(model._masked(logits[r, i - 1][None], False))), (r, i)
  return n_slots


@pytest.mark.parametrize("image_head,cfg_scale", [("diffusion", 2.0), ("lm", 3.0)])
def test_cached_interleaved_generation_equals_teacher_forced_recompute(image_head, cfg_scale):
  model, params = make(image_head)
  net = params["net"]
  # a <boi> / <eos> bias so that rows switch to images (and stop) mid-stream, at different steps
  bias = net["lm_head"]["bias"].at[il.BOI].add(1.2).at[il.EOS].add(0.6)
  params = dict(params, net=dict(net, lm_head=dict(net["lm_head"], bias=bias)))
  prompts = ["ab", "", "héllo", "z"]
  opts = dict(max_new=3 * N, cfg_scale=cfg_scale, image_temperature=0.0, steps=3, compute_dtype="float32")
  prompt_len = [len(p.encode()) + 1 for p in prompts]
  slots = 0
  for boi in (False, True):  # the model switches by itself, or the prompt ends in <boi>
    greedy = model.generate(params, prompts, jax.random.PRNGKey(5), temperature=0.0, boi=boi, **opts)
    slots += recompute_check(model, params, greedy, [n + boi for n in prompt_len], cfg_scale, 3)
  assert slots > 2 * N
  # exactly N slots between <boi> and <eoi> (sampled text: rows switch at random steps; some twice)
  for seed in range(3):
    out = model.generate(params, prompts, jax.random.PRNGKey(seed), temperature=1.0, **opts)
    tokens, slot, length = (np.asarray(a) for a in (out["seq"].tokens, out["seq"].slot, out["length"]))
    for r in range(len(prompts)):
      t, s = tokens[r, :length[r]], slot[r, :length[r]]
      for b in np.flatnonzero(t == il.BOI):
        got = s[b + 1:b + 1 + N]
        np.testing.assert_array_equal(got, np.arange(len(got)))  # the row may end inside its image
        if b + 1 + N < length[r]:
          assert t[b + 1 + N] == il.EOI
      assert (s >= 0).sum() == sum(min(N, length[r] - 1 - b) for b in np.flatnonzero(t == il.BOI))
      assert il.EOS not in t[:-1]


def test_text_to_image_image_to_text_and_bad_input():
  model, params = make()
  images = model.text_to_image(params, ["ab", "c"], jax.random.PRNGKey(0), cfg_scale=2.0, steps=3)
  assert images.shape == (2, 8, 8, 3) and float(jnp.abs(images).max()) <= 1.0
  texts = model.image_to_text(params, images, jax.random.PRNGKey(1), temperature=0.0)
  assert len(texts) == 2 and all(isinstance(t, str) and len(t) <= model.max_text for t in texts)
  with pytest.raises(ValueError, match="7 bytes; model.max_text allows at most 6"):
    model.text_to_image(params, ["toolong"], jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="not valid UTF-8"):
    model.generate(params, [b"\xff\xfe"], jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="not valid UTF-8"):
    model.sample(params, {"caption": jnp.zeros((1, 64), jnp.uint8).at[0, 0].set(0xC3)}, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="images must be"):
    model.image_to_text(params, jnp.zeros((1, 16, 16, 3)), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="unknown sampling option"):
    model.text_to_image(params, ["a"], jax.random.PRNGKey(0), cfg=2.0)
