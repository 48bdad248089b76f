"""Feedback for the seller after a practice call.
"""
