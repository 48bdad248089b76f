"""calltune: sales-call transcripts -> a model that plays the customer (KFP / Vertex AI pipeline)."""

__version__ = "0.1.0"
