"""The model runtime: the one place that knows how a conversation is windowed and encoded (`encoding`), how text is
generated, batched and streamed (`generation`), how replies are scored teacher-forced (`scoring`), and what answers
a conversation (`responders`: a local model folder or a Vertex endpoint), how a model is loaded, converted and hashed
(`loading`), and how sentence models score text (`embeddings`). Training, evaluation, batch inference, `calltune
serve` and `calltune chat` all use it; it imports none of them, and of the backends only the thin clients below it.
"""
