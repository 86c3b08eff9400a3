"""crediflow: data-centric SFT pipeline library."""
