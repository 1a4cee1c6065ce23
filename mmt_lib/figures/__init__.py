"""Figures: the plots and their style, the 2-D projections of features, and the synthetic data tour."""
