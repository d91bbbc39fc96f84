"""Many trials' adapters trained at once on one shared base model: ``layers`` (the packed
LoRA layers), ``trainer`` (the packed step), ``engine`` (slots running their own epochs) and
``trial`` (a Tune trial as the engine's thin client; ``search/packing.py`` starts the engine)."""
