"""The data steps: ingest (with `formats/`), translate, turn-split, sample, prepare (all of them, without KFP) and
synthetic training data (`synthesize/`). The bundled sample calls live in `bundled/`.
"""
