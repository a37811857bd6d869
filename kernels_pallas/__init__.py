"""Pallas attention kernels driven by the mask language, each next to its jnp reference.

Imports nothing from arjax. Kernels are written for Mosaic TPU (pallas_call +
PrefetchScalarGridSpec) and run on CPU in interpret mode; GPU goes through XLA (see README.md).
"""
from kernels_pallas import masks  # noqa: F401
from kernels_pallas.decode_attention import decode_attention  # noqa: F401
from kernels_pallas.flash_attention import (flash_attention, flash_attention_visits,  # noqa: F401
                                            supported)
from kernels_pallas.reference import (attention_reference, cache_positions,  # noqa: F401
                                      decode_attention_reference, masked_attention)
