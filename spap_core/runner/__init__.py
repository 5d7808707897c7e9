"""One pruning run from its request to its saved record, the single path of the CLI's `prune`, the
app's runs and sweep points and the benchmarks: what the run is (spec), what it reports as it goes
(progress) and the sequence itself (execute). It sits above storage because a run ends by saving
its pruned model and record there.
"""
