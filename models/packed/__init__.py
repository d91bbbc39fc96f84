"""Many trials' adapters trained at once on one shared base model: ``layers`` (the packed
LoRA layers), ``trainer`` (the packed step)."""
