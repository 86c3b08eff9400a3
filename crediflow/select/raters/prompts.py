"""Rating prompts: DS2's criteria (rarity, complexity, informativeness) folded into one
overall score, in our own words, and the check of a user's template."""

from __future__ import annotations

import string

from crediflow.errors import InputError

# The criteria are DS2's (rarity, complexity, informativeness), folded into one overall score
# on the rating scale. The rubric comes before the text, so HFRater computes it once.
_RUBRIC = (
    "You rate samples of training data for an AI assistant. Judge the sample below on three "
    "criteria: rarity (how uncommon and valuable its topic or task is), complexity (how much "
    "reasoning or knowledge a good answer needs) and informativeness (how correct, complete and "
    "useful its answer is). Weigh them into one overall quality score from 1 (poor: wrong, "
    "useless or harmful) to 5 (excellent: correct, helpful, clear and substantial). Use the "
    "whole scale: samples of similar quality may still differ by a point. "
)
DEFAULT_TEMPLATE = _RUBRIC + "Reply with the overall score as one digit.\n\nSample:\n{text}"
DEFAULT_JSON_TEMPLATE = (_RUBRIC + 'Reply only with JSON like {{"score": 3}}.\n\n'
                         "Sample:\n{text}")

DEFAULT_ANSWER_PREFIX = "Score: "

_PLACEHOLDER = "CREDIFLOWTEXTPLACEHOLDER7F3A"


def check_template(template: str) -> None:
    """A str.format template whose only field is {text}, used exactly once."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise InputError(f"bad rating template: {exc} (write literal braces as {{{{ }}}})",
                         field="template") from exc
    if fields != ["text"]:
        raise InputError(f"the rating template must contain {{text}} exactly once and no other "
                         f"field, found {fields}; write literal braces as {{{{ }}}}",
                         field="template")
