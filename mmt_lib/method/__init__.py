"""The paper's method: Stage 0 (the shared start), Stage I pre-training on the source (Sec. 4.2), Stage II
Mutual Mean-Teaching (Algorithm 1, ``mmt``), the losses (Eqs. 1-10), the mean teachers (Eq. 7) and the
pseudo labels (k-means, DBSCAN on the Jaccard distance). It imports only the runtime, data, models, the
settings and evaluation; never the figures or the experiment machinery."""
