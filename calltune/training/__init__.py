"""Tuning: LoRA SFT of a local causal model (`lora`) or an encoder-decoder one (`seq2seq`) with their shared Trainer
settings (`settings`), a Gemini tuning job on Vertex AI (`gemini`), and the factory that picks one (`tuners`).
"""
