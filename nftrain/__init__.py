"""nftrain: the cross-subject contrastive decoder of fMRI betas to image embeddings.

:mod:`~nftrain.config` (``TrainConfig``, checked key by key), :mod:`~nftrain.data` (the
chunk-aligned loader over the store), :mod:`~nftrain.model` (per-subject adapters, shared
backbone and head), :mod:`~nftrain.train` (``nf train`` / ``nf finetune``),
:mod:`~nftrain.checkpoint` (atomic safetensors checkpoints), :mod:`~nftrain.fingerprint`
(the store data a checkpoint was trained on) and :mod:`~nftrain.evaluate` (``nf evaluate``).
"""
