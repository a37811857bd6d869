"""The mask language (re-exported from kernels_pallas.masks, where the kernels consume it)."""
from kernels_pallas.masks import (EMPTY, FULL, PARTIAL, BlockCausal, Causal, Full, MaskSpec,  # noqa: F401
                                  Prefix, SkipCausal, WindowSink, block_causal, causal, full,
                                  prefix, skip_causal, window_sink)
