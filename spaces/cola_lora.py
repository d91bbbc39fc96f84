"""Search space of the CoLA + LoRA study (names = fields of ``ColaLoraConfig``)."""
from spaces.dims import Choice, LogUniform, Uniform

SPACE = {
    "learning_rate": LogUniform(1e-5, 3e-3),
    "lora_r": Choice((2, 4, 8, 16, 32)),
    "lora_alpha": Choice((4, 8, 16, 32, 64)),
    "lora_dropout": Uniform(0.0, 0.3),
    "batch_size": Choice((16, 32, 64)),
    "weight_decay": Uniform(0.0, 0.1),
}
