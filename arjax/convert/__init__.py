"""PyTorch checkpoints -> arjax params: VAR (var.py), LlamaGen (llamagen.py); shared helpers in common.py.

  python -m arjax.convert --from var --ckpt var_d16.pth --vae vae_ch160v4096z32.pth --out DIR
  python -m arjax.convert --from llamagen --ckpt c2i_B_256.pt --vae vq_ds16_c2i.pt --out DIR
DIR/checkpoints holds the paradigm's params and DIR/tokenizer/checkpoints the tokenizer's, in the
trainer's orbax layout, so `python -m arjax.sample --checkpoint DIR` and config.tokenizer.workdir work.
"""
