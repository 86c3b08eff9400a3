"""What the model stages after token_clean read: the cleaned records to train on and the
held-out split (finetune, prune)."""

from __future__ import annotations

import pyarrow.compute as pc

from crediflow.data.schema import NO_KEPT_TOKEN
from crediflow.errors import InputError
from crediflow.models.sft import TokenizedSFT, sft_from_table
from tasks.catalog import Catalog


def training_records(catalog: Catalog) -> tuple[TokenizedSFT, TokenizedSFT]:
    """(the token-cleaned records that keep a token, the held-out records); InputError when
    no record keeps a token."""
    table = catalog.read("token_cleaned")
    keep = pc.invert(pc.fill_null(table.column(NO_KEPT_TOKEN), False))
    cleaned = sft_from_table(table.filter(keep))
    if len(cleaned) == 0:
        raise InputError("no record keeps a token after cleaning; raise token_clean.rho",
                         file=str(catalog.path("token_cleaned")), field=NO_KEPT_TOKEN)
    return cleaned, sft_from_table(catalog.read("heldout"))
