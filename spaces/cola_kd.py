"""Search space of the CoLA distillation study (names = fields of ``ColaKDConfig``)."""
from spaces.dims import Choice, Fixed, LogUniform, Uniform

SPACE = {
    "learning_rate": LogUniform(1e-4, 1e-2),
    "kd_fraction": Uniform(0.0, 1.0),
    "kd_temperature": LogUniform(1.0, 10.0),
    "embed_dim": Choice((64, 128, 256)),
    "hidden_size": Choice((64, 128, 256)),
    "num_layers": Choice((1, 2)),
    "bidirectional": Choice((False, True)),
    "dropout": Uniform(0.0, 0.3),
    "batch_size": Choice((32, 64, 128)),
}

# The from-scratch baseline (cola_kd.py --no-kd / --with-baseline): the same space with
# kd_fraction = 1, plain cross-entropy; the temperature then has no effect, so it is fixed.
NO_KD = {"kd_fraction": Fixed(1.0), "kd_temperature": Fixed(1.0)}
