"""Embed: one sentence embedding per record text, each distinct text encoded once and cached."""

from crediflow.embed.embed import embed_texts

__all__ = ["embed_texts"]
