"""Run records on disk: written next to a saved model by the CLI and by the app as each run finishes,
read back by both.
"""
