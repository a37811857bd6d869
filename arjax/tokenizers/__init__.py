"""Image tokenizers: Trainables with encode/decode, `grid`, `vocab_size` and `kind`."""
from arjax.tokenizers.vq import VQTokenizer

__all__ = ["VQTokenizer"]
