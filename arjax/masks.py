"""The mask language (re-exported from kernels_pallas.masks, where the kernels consume it)."""
from kernels_pallas.masks import (EMPTY, FULL, PARTIAL, BlockCausal, Causal, Full, Intersection,  # noqa: F401
                                  MaskSpec, Prefix, Ranked, SkipCausal, SkipWindowSink, Union, WindowSink,
                                  block_causal, causal, full, prefix, ranked, skip_causal, skip_window_sink,
                                  window_sink)
