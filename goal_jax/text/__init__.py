"""Text: CLIP BPE tokenizer, sentence splitters, sentence -> token span masks."""
