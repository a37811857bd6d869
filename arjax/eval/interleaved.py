"""Image -> text caption accuracy of an interleaved (Orthus) model on the `shapes` split.

  config.evals.caption = dict(type='caption', every=1000, num_samples=256, sample_opts=dict(temperature=0.0))
The model captions the split's images (`model.image_to_text`); results: exact_accuracy (the whole caption) and
per-attribute accuracies (size, colour, shape, position) read from the generated text with the caption grammar of
arjax.data.shapes (an attribute that cannot be read counts as wrong), plus all_accuracy (all four right).
Text -> image accuracy is the 'judge' evaluator with cond='caption' (model.sample is text_to_image).
"""
from __future__ import annotations

import re

import jax
import numpy as np

from arjax.data import pipeline, shapes
from arjax.eval import distributed, evaluators

ATTRIBUTES = ("size", "colour", "shape", "position")
_WORD = lambda names: "(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + ")"


def parse_caption(text: str, colours) -> dict:
  """Attribute ints of a caption 'a {size} {colour} {shape} {at the <pos> | in the center}' (-1 where unreadable)."""
  pattern = (rf"^a {_WORD(shapes.SIZES)} {_WORD(colours)} {_WORD(shapes.SHAPES)} "
             rf"(?:at the {_WORD(p for p in shapes.POSITIONS if p != 'center')}|in the (center))$")
  m = re.match(pattern, text.strip())
  if not m:
    return {k: -1 for k in ATTRIBUTES}
  size, colour, shape, pos, centre = m.groups()
  return dict(size=shapes.SIZES.index(size), colour=list(colours).index(colour), shape=shapes.SHAPES.index(shape),
              position=shapes.POSITIONS.index(pos or centre))


class CaptionEval(evaluators.Evaluator):
  """Exact-match and per-attribute accuracy of image_to_text on the split's images."""

  def __init__(self, *args):
    super().__init__(*args)
    if not hasattr(self.model, "image_to_text"):
      raise ValueError(f"config.evals.{self.name} (type 'caption') needs a model with image_to_text; "
                       f"{type(self.model).__name__} has none")
    self.source()

  def run(self, params, rng, step=None):
    mesh = distributed.local_mesh()
    params, rng = distributed.to_local((params, rng), mesh)
    colours = tuple(self.data_cfg.colours)

    def fn(b, _):
      idx = evaluators._padded_indices(b, self.batch_size, self.num_samples)
      examples = [self.source()[int(i)] for i in idx]
      images = np.stack([pipeline.to_model_example(e)["image"] for e in examples])
      texts = self.model.image_to_text(params, images, jax.random.fold_in(rng, b), **self.cfg["sample_opts"])
      got = [parse_caption(t, colours) for t in texts]
      out = dict(exact=np.asarray([t.strip() == e["caption"] for t, e in zip(texts, examples)]))
      for k in ATTRIBUTES:
        out[k] = np.asarray([g[k] == int(e[k]) for g, e in zip(got, examples)])
      return out

    out = distributed.map_batches(fn, self.num_samples, self.batch_size)
    hits = {k: out[k] for k in ATTRIBUTES}
    return dict(exact_accuracy=float(np.mean(out["exact"])),
                **{f"{k}_accuracy": float(np.mean(v)) for k, v in hits.items()},
                all_accuracy=float(np.mean(np.all(list(hits.values()), axis=0))))
