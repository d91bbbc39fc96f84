"""Memory planned per trial: the estimate's terms, concurrency cut to what fits, and a trial
that cannot fit refused before Ray starts."""
from __future__ import annotations

import json

import pytest

from conftest import COLA_SCRIPT, run_main

SMOLLM2 = {"hidden": 576, "layers": 30, "vocab": 49152}


def test_estimate_terms():
    from search.memory import GIB, estimate

    base = dict(total_params=135_000_000, trainable_params=2_000_000, batch_size=8, tokens=520,
                **SMOLLM2)
    full_head = estimate(**base, loss_positions=520)
    summary_head = estimate(**base, loss_positions=130)
    checkpointed = estimate(**base, loss_positions=130, checkpointing=True)
    assert full_head.bytes > summary_head.bytes > checkpointed.bytes > GIB
    # doubling the batch doubles activations and logits, not the weights or the process
    doubled = estimate(**{**base, "batch_size": 16}, loss_positions=130)
    assert summary_head.bytes < doubled.bytes < 2 * summary_head.bytes
    assert "batch 8 x 520 tokens" in summary_head.basis


@pytest.mark.parametrize("loss_positions,checkpointing,measured_gib", [
    (518, False, 16.03), (128, False, 14.53), (128, True, 8.38)])
def test_estimate_errs_high_on_the_measured_peaks(loss_positions, checkpointing, measured_gib):
    """The peaks ``bench/summarize_memory.py`` measured for SmolLM2 LoRA (r 8 on every
    projection: 2.4 M trainable beside 134.5 M), batch 8 x 518 tokens: the estimate is above each,
    by at most half (a plan that errs low gets trials killed; one far too high runs fewer)."""
    from search.memory import GIB, estimate

    e = estimate(total_params=136_957_248, trainable_params=2_442_240, batch_size=8, tokens=518,
                 loss_positions=loss_positions, checkpointing=checkpointing, **SMOLLM2)
    assert measured_gib < e.bytes / GIB < 1.5 * measured_gib


def test_largest_reads_the_space_or_the_fixed_value():
    from search.memory import largest
    from spaces.dims import Choice

    assert largest({"batch_size": Choice((16, 64, 32))}, {}, "batch_size", 8) == 64
    assert largest({}, {"batch_size": 12}, "batch_size", 8) == 12
    assert largest({}, {}, "batch_size", 8) == 8


def test_a_trial_that_cannot_fit_exits_2_before_ray(tmp_path, monkeypatch, capsys):
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--memory-per-trial", "100000"], tmp_path,
                 monkeypatch, capsys)
    assert r.returncode == 2 and not r.ray_started
    assert "a trial needs about 100000.0 GiB (--memory-per-trial)" in r.stderr
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.slow
def test_memory_limits_trials_at_once(tmp_path, monkeypatch, capsys):
    """Two CPUs would run two trials at once; a memory per trial of more than half of what
    is available runs one, and Ray is given the memory as the trial's resource."""
    from search.memory import GIB, available_bytes

    per_trial = available_bytes(None) * 0.6 / GIB
    r = run_main(COLA_SCRIPT, ["--smoke-test", "--num-samples", "2", "--max-epochs", "1",
                               "--retrain-top-k", "0", "--memory-per-trial", f"{per_trial:.2f}"],
                 tmp_path, monkeypatch, capsys)
    assert r.returncode == 0, r.stderr[-2000:]
    exp = json.loads(next((tmp_path / "ray_results").glob("**/experiment.json")).read_text())
    assert exp["concurrency"] == 1 and exp["memory"]["fit"] == 1
    assert "1 trials at a time" in r.stdout and "GiB per trial (--memory-per-trial)" in r.stdout
    epochs = __import__("pandas").read_csv(next((tmp_path / "ray_results").glob("**/epochs.csv")))
    assert epochs["trial_id"].nunique() == 2


def test_the_memory_reaches_rays_trial_resources(tmp_path):
    from models.registry import get_study
    from search.sweep import SweepPlan
    from spaces.dims import LogUniform

    plan = SweepPlan(study=get_study("cola_lora"), storage_path=tmp_path, name="m",
                     space={"learning_rate": LogUniform(1e-3, 1e-2)}, fixed={}, num_samples=2,
                     max_epochs=2, grace_period=1, reduction_factor=2, seed=0, cpus_per_trial=1,
                     gpus_per_trial=0, concurrency=2, retrain_top_k=0, retrain_seeds=1)
    assert "memory" not in plan.resources
    plan.memory_per_trial = 3 * 2 ** 30
    assert plan.resources == {"cpu": 1, "gpu": 0, "memory": 3 * 2 ** 30}


# --- a batch that does not fit runs in micro-batches (search.memory.fit_batch) ---------------
GIB = 2 ** 30


def _plan(tmp_path, study: str, space: dict, fixed: dict):
    from models.registry import get_study
    from search.sweep import SweepPlan

    return SweepPlan(study=get_study(study), storage_path=tmp_path, name="m", space=space,
                     fixed=dict(fixed), num_samples=2, max_epochs=2, grace_period=1,
                     reduction_factor=2, seed=0, cpus_per_trial=1, gpus_per_trial=0,
                     concurrency=2, retrain_top_k=0, retrain_seeds=1)


@pytest.fixture(scope="module")
def smollm2_prompt(tmp_path_factory):
    """``cnndm_summarize.py --method prompt --model SmolLM2-135M-Instruct.Q4_1.gguf`` with its
    default flags, as far as the memory plan sees it: the command's own estimate
    (``_memory``, trainable and total counts from ``check_model_fits`` on an empty model) on
    SmolLM2-135M's shape (the GGUF's config: hidden 576, 30 layers, vocabulary 49,152, tied
    embeddings; its tokenizer makes " TL;DR:" 4 tokens). No weights are loaded."""
    from transformers import LlamaConfig

    from search import cnndm_summarize as cmd
    from search.prepared import Prepared

    model_dir = tmp_path_factory.mktemp("smollm2-shape")
    LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                max_position_embeddings=8192, tie_word_embeddings=True).save_pretrained(model_dir)
    args = cmd.parser().parse_args(["--method", "prompt", "--model", "x.gguf"])
    for k, v in cmd.TOKENS.items():
        setattr(args, k, v)
    args.smoke_test, args.space = False, []
    sep = 4
    _, sizes = cmd.check_model_fits(args, str(model_dir), sep)
    prepared = Prepared(
        data=None, describe={}, memory=lambda study, space, fixed: cmd._memory(
            args, str(model_dir), sep, sizes, study, space, fixed),
        fixed={"model": "x", "batch_size": args.batch_size, "grad_accum": args.grad_accum,
               "gradient_checkpointing": args.gradient_checkpointing})
    return args, prepared


def test_smollm2_summarization_defaults_fit_24_gib_in_micro_batches(smollm2_prompt, tmp_path,
                                                                     capsys):
    """The default prompt-tuning sweep on SmolLM2 needs about 23.1 GiB at batch 8; a 24 GiB
    machine offers about 20.4 GiB. The plan runs each batch of 8 as two of 4 (printed, in the
    fixed config every trial gets, and in experiment.json's memory record) instead of exit 2."""
    from models.registry import get_study
    from search.output import print_plan
    from search.resources import Resources, plan_memory

    args, prepared = smollm2_prompt
    study = get_study("cnndm_prompt")
    plan = _plan(tmp_path, "cnndm_prompt", study.space, prepared.fixed)
    whole = prepared.memory(study.name, plan.space, plan.fixed)
    assert whole.gib == pytest.approx(23.1, abs=0.05) and "batch 8 x 745 tokens" in whole.basis
    notes = plan_memory([plan], prepared, args, Resources(0, 0, 2), available=int(20.4 * GIB))
    note = notes["m"]
    assert plan.fixed["micro_batch_size"] == 4 and not plan.fixed["gradient_checkpointing"]
    assert plan.fixed["batch_size"] == 8 and plan.fixed["grad_accum"] == 1  # the same steps
    assert note["micro_batch_size"] == 4 and "gradient_checkpointing" not in note
    assert note["per_trial_gib"] == pytest.approx(12.3, abs=0.05) and note["fit"] == 1
    assert "batch 4 x 745 tokens" in note["basis"]
    assert plan.memory_per_trial < 20.4 * GIB and plan.concurrency == 1
    assert study.config_cls.from_tune(plan.fixed).micro_batch_size == 4  # trials read it
    print_plan(plan, prepared, Resources(0, 0, 2))
    line = next(x for x in capsys.readouterr().out.splitlines() if "memory:" in x)
    assert "12.3 GiB per trial" in line and \
        "batches of up to 8 rows run as 2 micro-batches of at most 4 rows" in line


def test_a_batch_that_fits_is_left_whole(smollm2_prompt, tmp_path):
    from models.registry import get_study
    from search.resources import Resources, plan_memory

    args, prepared = smollm2_prompt
    plan = _plan(tmp_path, "cnndm_prompt", get_study("cnndm_prompt").space, prepared.fixed)
    note = plan_memory([plan], prepared, args, Resources(0, 0, 2), available=48 * GIB)["m"]
    assert "micro_batch_size" not in plan.fixed and "fitted" not in note and note["fit"] == 2


def test_checkpointing_is_added_when_one_row_does_not_fit(smollm2_prompt, tmp_path):
    """One row a pass needs ~4.2 GiB, with gradient checkpointing ~3.0 GiB: at 3.5 GiB the plan
    turns it on; below what even that needs it exits 2, naming what it tried."""
    from models.errors import InputError
    from models.registry import get_study
    from search.resources import Resources, plan_memory

    args, prepared = smollm2_prompt
    plan = _plan(tmp_path, "cnndm_prompt", get_study("cnndm_prompt").space, prepared.fixed)
    note = plan_memory([plan], prepared, args, Resources(0, 0, 2), available=int(3.5 * GIB))["m"]
    assert plan.fixed["micro_batch_size"] == 1 and plan.fixed["gradient_checkpointing"] is True
    assert "checkpointed" in note["basis"] and "with gradient checkpointing" in note["fitted"]
    plan = _plan(tmp_path, "cnndm_prompt", get_study("cnndm_prompt").space, prepared.fixed)
    with pytest.raises(InputError, match=r"a trial needs about 3\.0 GiB even with batches of up "
                       r"to 8 rows run as 8 micro-batches of at most 1 row .* and with gradient "
                       r"checkpointing .* but 2\.0 GiB are available: lower the token limits"):
        plan_memory([plan], prepared, args, Resources(0, 0, 2), available=2 * GIB)
    assert "micro_batch_size" not in plan.fixed  # nothing planned


def test_cola_batches_drawn_from_the_space_split_into_micro_batches(tmp_path):
    """CoLA draws its batch size from the space and has no gradient checkpointing: every
    drawn batch is split into chunks of at most the planned rows. The estimate is the one
    ``search/cola_lora.py`` hands the plan (the largest batch via ``largest``)."""
    from models.errors import InputError
    from search.memory import estimate, largest
    from search.prepared import Prepared
    from search.resources import Resources, plan_memory
    from spaces.dims import Choice, LogUniform

    prepared = Prepared(data=None, fixed={"model": "gpt2"}, describe={},
                        memory=lambda study, space, fixed: estimate(
                            total_params=124_000_000, trainable_params=800_000, tokens=64,
                            batch_size=largest(space, fixed, "batch_size", 32), hidden=768,
                            layers=12))
    space = {"learning_rate": LogUniform(1e-4, 1e-3), "batch_size": Choice((16, 64))}
    need = {b: prepared.memory("cola_lora", {}, {"batch_size": b}).bytes for b in (64, 22)}
    plan = _plan(tmp_path, "cola_lora", space, prepared.fixed)
    args = type("A", (), {"memory_per_trial": None})()
    note = plan_memory([plan], prepared, args, Resources(0, 0, 2), available=need[22])["m"]
    assert need[64] > need[22] and plan.fixed["micro_batch_size"] == 22  # 64 in three of <= 22
    assert plan.space == space and "gradient_checkpointing" not in plan.fixed
    assert "batches of up to 64 rows run as 3 micro-batches of at most 22 rows" in note["fitted"]
    plan = _plan(tmp_path, "cola_lora", space, prepared.fixed)
    with pytest.raises(InputError, match=r"even with batches of up to 64 rows run as 64 "
                                         r"micro-batches of at most 1 row \(") as e:
        plan_memory([plan], prepared, args, Resources(0, 0, 2), available=GIB)
    assert "checkpointing" not in str(e.value)
