"""Hooks of open_clip / open_clip_train, one module per upstream surface."""
