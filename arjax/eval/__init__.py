"""Evaluation: evaluators named in config.evals (FID / IS / precision-recall / bits-per-dim / judges)."""
from arjax.eval.evaluators import FeatureNet, build_evaluators, load_feature_net

__all__ = ["FeatureNet", "build_evaluators", "load_feature_net"]
