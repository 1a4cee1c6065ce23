"""mmt_lib: Mutual Mean-Teaching (Ge, Chen, Li; ICLR 2020) for unsupervised domain adaptive re-ID.

A thin library: data, models, losses, mean teachers, pseudo labels, the two training stages,
evaluation, analysis and plots. The notebooks under ``notebooks/`` call it; nothing here imports them.
"""

__version__ = "0.1.0"
