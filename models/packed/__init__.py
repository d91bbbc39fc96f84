"""Many trials' adapters trained at once on one shared base model: ``layers`` (routing, per-slot
dropout, the base class of a packed layer, the per-slot head), ``model`` (``PackedModel`` and
``PackedMethod``), ``lora``/``dora``/``ia3`` (one file per method), ``trainer`` (the packed
step), ``engine`` (slots running their own epochs), ``probe`` (how many to pack) and ``trial``
(a Tune trial as the engine's thin client; ``search/packing.py`` starts the engine)."""
