"""Headless training: SFT, GREEN, offline finding scorer, preference sets, DPO, evaluation, demo."""
