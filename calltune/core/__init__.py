"""The bottom layer: plain helpers every other layer may use (files, SQLite, text, threads, Cloud Storage,
reports and figures, network addresses). It imports nothing of calltune but the config.
"""
