"""Pruning methods: SPAP (penalty path + refit + alternating minimization) and its baselines.
"""
