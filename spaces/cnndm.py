"""Search spaces of the summarization study, one per method (names = config fields). The
learning-rate ranges come from ``bench/summary_space_coverage.py`` (README, "Default spaces"):
the decade below each range barely moved the loss by the grace period; above the LoRA and
last-blocks ranges the loss turned back up by epoch 2."""
from spaces.dims import Choice, LogUniform

PROMPT = {
    "learning_rate": LogUniform(1e-3, 1e-1),  # soft prompts want large steps
    "num_virtual_tokens": Choice((5, 10, 20, 50, 100)),
}
LORA = {
    "learning_rate": LogUniform(1e-4, 5e-3),
    "lora_r": Choice((2, 4, 8, 16, 32)),
    "lora_alpha": Choice((4, 8, 16, 32, 64)),
}
LAST_LAYERS = {
    "learning_rate": LogUniform(1e-5, 1e-3),
    "n_last_layers": Choice((1, 2, 4)),
}

# --smoke-test, per method: the tiny smoke GPT-2 (briefly pretrained in-process) wants larger
# steps than a real one, and has 2 blocks. --space flags, so a user's own --space wins.
SMOKE = {
    "prompt": ["learning_rate=1e-2:3e-1"],
    "lora": ["learning_rate=3e-3:3e-2"],
    "last_layers": ["learning_rate=1e-3:1e-2", "n_last_layers=1,2"],
}
