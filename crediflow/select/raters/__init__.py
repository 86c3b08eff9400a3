"""Raters by kind: a local causal LM in one forward pass (`hf`), any OpenAI-compatible
endpoint (`openai_api`); `base` holds what they share, `prompts` the rating prompts."""
