"""Synthetic training data: the job (`job.synthesize`), its prompts, its quality filter and its near-duplicate
removal.
"""
