"""Class-conditional any-subset AR (AS-ARM) over the UTF-8 bytes of `shapes` captions (64 bytes, 0-padded; no image
tokenizer), sampled / infilled with ASSD: configs/shapes/any_order.py with caption tokens. Sample grids show the
sampled captions drawn as text.

  python -m arjax.main --config configs/shapes/any_order_text.py --workdir runs/any_order_text
  python -m arjax.main --config configs/shapes/any_order_text.py:smoke --workdir /tmp/any_order_text
  python scripts/infill.py --config configs/shapes/any_order_text.py --workdir runs/any_order_text \
      --out runs/any_order_text_infill
Presets: (none) demo size; `smoke` tiny, a few steps.
"""
import os

import ml_collections

from arjax.config import load_config, parse_arg

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False)
  c = load_config(os.path.join(HERE, "any_order.py") + (":smoke" if arg.smoke else ""))
  del c["tokenizer"]
  c.evals = ml_collections.ConfigDict()  # the shapes judge reads images; captions are judged by scripts/infill.py
  c.data.image_size = 96  # the pipeline's images are unused; sample grids draw captions on 96x96 canvases
  c.model.update(tokens="caption", render_size=c.data.image_size)
  c.model.transformer.pos = "rope1d"
  return c
