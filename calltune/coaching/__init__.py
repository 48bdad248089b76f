"""Feedback for the seller after a practice call, in the company's own scorecard: the scorecard learned from its
graded calls (scorecard), the conversation analytics (analytics), the offline review's models (coach), the judge's
review and calibration (review), the pipeline's coach step (step), the practice history (history) and
`calltune coach` (transcripts).
"""
