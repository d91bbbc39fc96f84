"""Search space of CoLA + DoRA (names = fields of ``ColaDoraConfig``): LoRA's, since DoRA adds
a magnitude vector to the same low-rank update."""
from spaces.cola_lora import SMOKE, SPACE  # noqa: F401
