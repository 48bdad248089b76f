"""The model runtime: the one place that knows how a conversation is windowed and encoded (`encoding`), how text is
generated, batched and streamed (`generation`), how replies are scored teacher-forced (`scoring`), and what answers
a conversation (`responders`: a local model folder or a Vertex endpoint). Loading and hashing live in
`calltune.models`. Training, evaluation, batch inference, `calltune serve` and `calltune chat` all use it; it imports
none of them.
"""
