"""Search space of the CoLA + LoRA study (names = fields of ``ColaLoraConfig``).

Ranges follow ``bench/space_coverage.py`` on the MiniLM stand-in (README, "Default spaces"):
below a learning rate of 1e-4 LoRA did not even fit the class prior in 3 epochs, above 3e-3
training was unstable or collapsed to a constant output, and lora_alpha 64 did not leave the
majority class in 8 of 9 configurations."""
from spaces.dims import Choice, LogUniform, Uniform

SPACE = {
    "learning_rate": LogUniform(1e-4, 3e-3),
    "lora_r": Choice((4, 8, 16)),
    "lora_alpha": Choice((8, 16, 32)),
    "lora_dropout": Uniform(0.0, 0.3),
    "batch_size": Choice((16, 32, 64)),
    "weight_decay": Uniform(0.0, 0.1),
}
