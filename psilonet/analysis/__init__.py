"""Representation analysis: activation capture, similarity metrics (CKA, SVCCA, PWCCA) and the
baseline-vs-trained comparisons and PCA trajectories built from them."""
