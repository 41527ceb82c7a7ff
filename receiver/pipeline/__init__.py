"""Bounded hand-offs between the receive path and the analysis stages."""
