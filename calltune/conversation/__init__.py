"""Conversations as data: the data contracts (`schema`), their renderings for each model family (`render`), and
how a call is cut into windows of turns (`windows`), the one windowing that training, evaluation and serving share.
"""
