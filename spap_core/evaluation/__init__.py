"""Measuring a model: perplexity under the literature's protocol, latency and memory, generated text
side by side, and zero-shot accuracy through lm-eval-harness.
"""
