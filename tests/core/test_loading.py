"""Loading from folders and cached ids, the tokenizer pair check, and bad sources."""

import pytest

from rstitch_core import check_pair, load_model
from rstitch_core.models.loading import native_bf16_cpu, parse_device, parse_dtype, resolve_dtype
from tiny_models import build_tokenizer


def test_folder_loads_with_dtype_and_metadata(pair_dirs):
    runner = load_model(str(pair_dirs[0]), dtype="bfloat16", name="slm")
    assert runner.dtype.is_floating_point and str(runner.dtype) == "torch.bfloat16"
    assert runner.vocab_size == len(runner.tokenizer) and runner.max_context == 512
    assert runner.eos_token_ids == {runner.tokenizer.eos_token_id}


def test_pair_check_accepts_the_shared_tokenizer(engine):
    check_pair(engine.slm, engine.llm)


def test_pair_check_names_the_first_mismatching_token(engine, tmp_path):
    other = build_tokenizer(vocab_size=300)  # fewer merges: later tokens are missing
    slm = load_model(str(_with_tokenizer(engine, other, tmp_path)), name="slm")
    with pytest.raises(ValueError, match=r"incompatible tokenizers: token '.+' is id \d+ in the SLM tokenizer"):
        check_pair(engine.llm, slm)
    with pytest.raises(ValueError, match=r"incompatible tokenizers: token '.+' is id \d+ in the LLM tokenizer but is missing"):
        check_pair(slm, engine.llm)


def test_pair_check_requires_the_same_eos(engine, tmp_path):
    tok = build_tokenizer()
    tok.eos_token = "<|im_end|>"
    slm = load_model(str(_with_tokenizer(engine, tok, tmp_path)), name="slm")
    with pytest.raises(ValueError, match="EOS is id 2 .* in the SLM tokenizer but id 0"):
        check_pair(slm, engine.llm)


def _with_tokenizer(engine, tokenizer, tmp_path):
    folder = tmp_path / "other"
    engine.slm.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("source, message", [
    ("/no/such/model", "model path '/no/such/model' does not exist"),
    ("./missing.gguf", "does not exist"),
    ("Qwen/Qwen2.5-0.5B-Instruct", "not a local folder, a .gguf file, or a Hugging Face id in the local cache"),
    ("", "non-empty path"),
])
def test_bad_sources_give_a_clear_value_error(source, message):
    with pytest.raises(ValueError, match=message):
        load_model(source)


def test_folder_without_config_and_non_model_file(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="neither a folder nor a .gguf file"):
        load_model(str(tmp_path / "weights.bin"))


def test_dtype_and_device_validation():
    with pytest.raises(ValueError, match="unknown dtype 'int8'; accepted: float32, bfloat16, float16"):
        parse_dtype("int8")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        parse_device("tpu")
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            parse_device("cuda:0")


@pytest.mark.parametrize("flags, native", [
    ({"avx2", "fma"}, False),  # AMD EPYC Zen 3: bf16 emulated
    ({"avx2", "avx512f", "avx512_bf16"}, True),
    ({"avx2", "amx_tile", "amx_bf16"}, True),
    (set(), False),
])
def test_native_bf16_is_read_from_the_cpu_flags(flags, native):
    assert native_bf16_cpu(frozenset(flags)) is native


def test_auto_dtype_without_measurements_is_bfloat16_on_a_cpu_and_an_explicit_one_is_kept():
    assert resolve_dtype("auto", "cpu") == "bfloat16"  # decoding is memory-bound: half the bytes
    assert resolve_dtype("float32", "cpu") == "float32"
    with pytest.raises(ValueError, match="unknown dtype 'bf17'"):
        resolve_dtype("bf17", "cpu")
