"""Text sources and the token windows cut from them for calibration and evaluation.
"""
