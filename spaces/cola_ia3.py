"""Search space of CoLA + IA3 (names = fields of ``ColaIA3Config``). IA3 trains scaling
vectors that start at 1, so it takes larger steps than LoRA (the (IA)^3 paper used 3e-3), and
no weight decay: decay would pull the vectors towards 0, i.e. towards switching the
activations off, not towards the pretrained model."""
from spaces.dims import Choice, LogUniform

SPACE = {
    "learning_rate": LogUniform(1e-3, 3e-2),
    "batch_size": Choice((16, 32, 64)),
}

# --smoke-test: the tiny random GPT-2 needs larger steps still.
SMOKE = ["learning_rate=1e-2:1e-1"]
