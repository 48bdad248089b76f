"""What sellers use: `calltune serve` (`serve/`: an OpenAI-compatible API), the practice page (`practice`, its
files in `static/`) and `calltune chat` (`chat`).
"""
