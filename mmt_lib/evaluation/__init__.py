"""Evaluation: feature extraction, mAP / CMC / mINP, k-reciprocal re-ranking (Zhong et al., CVPR 2017),
and how noisy a labelling is against the true identities. Used by the method and by everything above it."""
