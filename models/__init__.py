"""Model building, losses, the one shared training loop and the Ray trainables.

Nothing in this package starts Ray; only ``models.trainables`` imports it.
"""
