"""Evaluation: retrieval metrics, GOAL's joint mAP, zero-shot classification, results tables."""
