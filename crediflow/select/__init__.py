"""Select: DS2 (Pang et al., "Improving Data Efficiency via Curating LLM-Driven Rating
Systems"): rate, curate the ratings with HOC, select by curated score and long-tail diversity."""

from crediflow.select.curation import Curation, curate_and_select, integer_bins

__all__ = ["Curation", "curate_and_select", "integer_bins"]
