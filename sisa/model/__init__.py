"""The frozen base model (loading, the GGUF conversion, fingerprints, chat rendering, the loss),
the shards' LoRA adapters (peft), and the mixture that serves them as one distribution.
"""
