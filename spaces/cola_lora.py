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

# --smoke-test: a randomly initialised tiny GPT-2 needs larger steps than a pretrained one to
# learn anything in 3 epochs (below ~3e-3 it stays at the majority class, MCC 0; above ~2e-2
# it diverges on length-grouped batches). --space flags, so a user's own --space wins.
SMOKE = ["learning_rate=3e-3:1.5e-2"]
