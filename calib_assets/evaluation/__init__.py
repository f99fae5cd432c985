"""Evaluation of dense and compressed models."""

from calib_assets.evaluation.perplexity import PerplexityResult, heldout_token_stream, perplexity

__all__ = ["PerplexityResult", "heldout_token_stream", "perplexity"]
