"""Entry scripts (``python search/<study>.py``) and the sweep machinery they share."""
