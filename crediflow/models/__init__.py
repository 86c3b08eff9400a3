"""Model loading: the sentence encoder and causal language models, from local files only."""
