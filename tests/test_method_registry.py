"""A summarization method is one registry entry: search/cnndm_summarize.py offers it under
--method, applies its smoke-test dimensions, and prints its trainable-parameter counts from the
method's own ``trainable_counts``, with no edit to the script."""
import importlib

from spaces.dims import Choice, LogUniform


def test_a_summarization_method_is_one_registry_entry(monkeypatch, tiny_model):
    from models import registry, summarize_last_layers
    import search.cnndm_summarize as script

    study = registry._cnndm("top_block", summarize_last_layers,
                            summarize_last_layers.SumLastLayersConfig,
                            {"learning_rate": LogUniform(1e-5, 1e-3),
                             "n_last_layers": Choice((1,))})
    monkeypatch.setitem(registry.STUDIES, "cnndm_top_block", study)
    try:
        script = importlib.reload(script)
        assert script.METHODS["top-block"] == "cnndm_top_block"
        assert set(script.METHODS) == {"prompt", "lora", "last-layers", "top-block"}
        args = script.parser().parse_args(["--method", "top-block", "--smoke-test"])
        variants = script.variants(args)
        assert list(variants) == ["-top-block"] and variants["-top-block"].study == "cnndm_top_block"
        args.max_source_tokens, args.max_target_tokens = 32, 8
        counts, sizes = script.check_model_fits(args, tiny_model, sep_tokens=3)
        from transformers import AutoModelForCausalLM
        model = summarize_last_layers.freeze_all_but_last(
            AutoModelForCausalLM.from_pretrained(tiny_model), 1)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert counts["top-block"].startswith(f"1 blocks: {trainable:,} of ")
        assert sizes["top-block"][0] == trainable
    finally:
        monkeypatch.undo()
        importlib.reload(script)


def test_smoke_dimensions_come_from_the_space_module_and_yield_to_space_flags():
    import search.cnndm_summarize as script

    args = script.parser().parse_args(["--smoke-test", "--method", "last-layers"])
    over = script.variants(args)["-last-layers"].overrides
    assert over["learning_rate"] == LogUniform(1e-3, 1e-2)
    assert over["n_last_layers"] == Choice((1, 2))
    args = script.parser().parse_args(["--smoke-test", "--method", "last-layers",
                                       "--space", "learning_rate=1e-4:1e-3"])
    assert set(script.variants(args)["-last-layers"].overrides) == {"n_last_layers"}


def test_smoke_overrides_yield_to_the_users_space():
    """One rule for both scripts: a study's smoke-test dimension applies unless --space names
    the same dimension (CoLA prepends the rest to --space, summarization per method)."""
    from models.registry import get_study
    import search.cnndm_summarize as script

    lora = get_study("cola_lora")
    assert lora.smoke_space and lora.smoke_overrides([]) == list(lora.smoke_space)
    assert lora.smoke_overrides(["learning_rate=1e-4:1e-3"]) == []
    assert lora.smoke_overrides(["lora_r=4,8"]) == list(lora.smoke_space)
    prompt = get_study("cnndm_prompt")
    dim = prompt.smoke_space[0].split("=", 1)[0]
    args = script.parser().parse_args(["--method", "prompt", "--smoke-test"])
    assert set(script.variants(args)["-prompt"].overrides) == {
        x.split("=", 1)[0] for x in prompt.smoke_space}
    args = script.parser().parse_args(["--method", "prompt", "--smoke-test", "--space",
                                       f"{dim}={prompt.smoke_space[0].split('=', 1)[1]}"])
    assert dim not in script.variants(args)["-prompt"].overrides
