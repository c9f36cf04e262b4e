"""nftrain: the cross-subject contrastive decoder of fMRI betas to image embeddings.

:mod:`~nftrain.config` (``TrainConfig``, checked key by key), :mod:`~nftrain.data` (the
chunk-aligned loader over the store; its shuffle buffer and read-ahead thread in
:mod:`~nftrain.buffer`), :mod:`~nftrain.model` (per-subject adapters, shared
backbone and head), :mod:`~nftrain.losses` (InfoNCE, cosine regression),
:mod:`~nftrain.steps` (steps per epoch, schedule, torchrun, what one step does to a batch),
:mod:`~nftrain.train` (``nf train``; ``nf finetune`` with :mod:`~nftrain.finetune`;
validation in :mod:`~nftrain.validation`),
:mod:`~nftrain.ridge_init` (the closed-form ridge start), :mod:`~nftrain.checkpoint` (atomic
safetensors checkpoints), :mod:`~nftrain.fingerprint` (the store data a checkpoint was trained
on) and :mod:`~nftrain.evaluate` (``nf evaluate``).
"""
