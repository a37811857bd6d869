"""Data: the embedded `shapes` dataset, TFDS / image-folder sources and grain pipelines (see pipeline.py)."""
