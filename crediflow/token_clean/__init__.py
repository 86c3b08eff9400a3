"""Token Cleaning (Pang et al.): train only on the response tokens a reference model learned.

Each response token is scored by score = loss_base(token) - loss_ref(token), the per-token
cross-entropy of the untuned base model minus that of a reference model (both from
`crediflow.models.token_loss.token_losses`); a high score means the reference model learned
the token. All response tokens of the whole dataset are ranked together and the top rho are
kept (`select_tokens(..., granularity="global")`): this global ranking is what sets the method
apart from RHO-1, which ranks the tokens within each sample (`granularity="sample"`). It is a
ratio, not a threshold: negative scores inside the top rho are kept. Dropped tokens get the
label -100 (`apply_selection`); a record left with no kept token is removed (`drop_records`).
`tokens_html` shows kept and dropped tokens of a sample of records.
"""

from crediflow.token_clean.clean import (
    Cleaned,
    clean_fixed,
    clean_self_evolving,
    warmup_records,
)
from crediflow.token_clean.config import GRANULARITIES, MODES, TokenCleanConfig
from crediflow.token_clean.html import tokens_html
from crediflow.token_clean.selection import (
    apply_selection,
    drop_records,
    quota,
    select_tokens,
)

__all__ = ["GRANULARITIES", "MODES", "Cleaned", "TokenCleanConfig", "apply_selection",
           "clean_fixed", "clean_self_evolving", "drop_records", "quota", "select_tokens",
           "tokens_html", "warmup_records"]
