"""MAGE Studio training package: tokenizer training, token cache, MAGE/MAGE-C pre-training,
linear probe, fine-tuning and evaluation. Runs on one CPU or many GPUs (torchrun/DDP)."""
