"""The batched highway backend: straight-road families as tensors on any torch device (see :mod:`.sim`)."""
