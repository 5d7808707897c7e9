"""The layer-wise problem every method solves, built from captured statistics only: the objective and
its refits (objective), the sufficient statistics accumulated chunk by chunk (statistics) and the
head layouts a pruned layer can keep (layout). Knows no model and no method.
"""
