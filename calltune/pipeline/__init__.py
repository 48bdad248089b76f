"""Running the pipeline: locally under kfp.local (`local_run`, with `quiet_kfp` for the task processes' logs), on
Vertex AI (`vertex`: checks, submit, upload), and publishing a step's report to its KFP artifacts (`artifacts`).
"""
