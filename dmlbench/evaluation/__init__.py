"""Evaluation of embeddings: exact neighbours, Recall@K / R-Precision / MAP@R, faiss-exact k-means and NMI,
and the embedding diagnostics. Depends on torch and numpy only, so that training can select its
epochs with it."""
