"""Shared maths: the k-NN graph, HOC, label-vote detection and the checks they share."""
