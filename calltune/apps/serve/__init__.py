"""`calltune serve`, laid out as vLLM's OpenAI server is: `protocol` (the wire schema and its errors), `watcher`
(which model answers: the secret's latest version), `chat` (a chat completion request, phase by phase) and `app`
(the FastAPI app, its routes and its lifetime)."""
