"""The trial harness frees a finished trial's objects before it empties the CUDA cache, also
when Tune ends the trial the way it ends every stopped one: SystemExit raised inside
``tune.report`` (ray.train._internal.session). A reused worker's next trial then starts with
nothing allocated and nothing cached. The CUDA figures are in the README; on the CPU the check
is that the model is gone by the time ``release`` runs."""
import weakref
from pathlib import Path

import pytest
import torch
from ray import tune

from models import trial
from models.config import TrialConfig
from models.loop import TrialSetup


def test_stopped_trial_is_freed_before_release(monkeypatch):
    models = []
    alive_at_release = []
    real_release = trial.release

    def spy_release():
        alive_at_release.append([ref() is not None for ref in models])
        real_release()

    def stop_at_second_report(metrics, checkpoint=None):
        if metrics["epoch"] == 2:
            raise SystemExit(0)  # what the session does once Tune decided to stop the trial

    def setup(cfg, data, device):
        model = torch.nn.Linear(4, 2)
        models.append(weakref.ref(model))
        batch = {"x": torch.randn(8, 4), "y": torch.randint(0, 2, (8,))}
        return TrialSetup(
            model=model, loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(b["x"]), b["y"]),
            train_batches=lambda e: [batch], steps_per_epoch=1,
            evaluate=lambda m: {"val_mcc": 0.0}, best_metric="val_mcc", mode="max",
            save_weights=lambda d: torch.save(model.state_dict(), Path(d) / "w.pt"),
            load_weights=lambda d: None, info={})

    monkeypatch.setattr(trial, "release", spy_release)
    monkeypatch.setattr(tune, "report", stop_at_second_report)
    monkeypatch.setattr(trial, "_node_id", lambda: "local")
    with pytest.raises(SystemExit):
        trial.run_trial({"learning_rate": 1e-3, "max_epochs": 3, "model": "none"}, data=None,
                        provenance={}, config_cls=TrialConfig, setup_fn=setup)
    assert alive_at_release == [[False]], "the stopped trial's model outlived release()"
