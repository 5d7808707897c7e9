"""A pruning run from end to end: the sequential walk over the layers (walk), one parameter budget
split between MLP channels and heads (split), the fit check before any work (budget), the run's
parameter table (parameters) and the experiment that prunes and evaluates (experiment).
"""
