"""Offline evaluation (paper Sec. 5.1, Table 2): protocol, metrics, baselines and M2GRL retrieval.

- trainer.eval.protocol: triggers, histories and ground truth from a prepared directory
- trainer.eval.metrics: HitRate / Precision / Recall / F1 @K
- trainer.eval.methods: the registry of evaluated methods (popularity, itemcf, item2vec_gensim, deepwalk,
  eges, m2grl and its ablations)
- trainer.eval.diversity: discovery of new categories (Sec. 6, offline)
- trainer.eval.runner / report: metrics.json and metrics.md (command ``m2grl-train evaluate``)
"""
