"""Loading: devices, the bundled model, local folders, and one-sentence errors for every failure."""

import pytest
import torch
from transformers import BertConfig, GPT2Config, GPT2LMHeadModel

from course_utils import BUNDLED_MODEL, CourseError, bundled_checkpoints, get_device, load_model
from course_utils.devices import check_device


def test_device_override(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    monkeypatch.delenv("COURSE_DEVICE")
    assert get_device().type in ("cpu", "cuda", "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_gpu_says_what_to_do(monkeypatch):
    with pytest.raises(CourseError, match="device='cpu'"):
        check_device("cuda")
    monkeypatch.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(CourseError, match="No CUDA GPU"):
        load_model()
    with pytest.raises(CourseError, match="not a device name"):
        check_device("gpu0")


def test_bundled_model_loads_offline_with_the_course_kernel():
    model = load_model(device="cpu")
    assert model.model.config._attn_implementation == "course_eager"
    assert model.dtype == torch.float32 and model.family.name == "GPT-2"
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (2, 256, 4096)
    assert "HookedModel(GPT-2" in repr(model)


def test_tokens_round_trip():
    model = load_model(device="cpu")
    text = "def add(a, b):\n    return a + b"
    tokens = model.to_tokens(text)
    assert tokens.shape[0] == 1 and tokens[0, 0] == model.bos_token_id
    assert model.to_tokens(text, prepend_bos=False).shape[1] == tokens.shape[1] - 1
    strs = model.to_str_tokens(text)
    assert "".join(strs[1:]) == text and len(strs) == tokens.shape[1]
    batch = model.to_tokens(["a", "def f(x): pass"])
    assert batch.shape[0] == 2 and (batch[:, 0] == model.bos_token_id).all()
    with pytest.raises(CourseError, match="one sequence"):
        model.to_str_tokens(batch)


def test_unknown_name_offline_names_the_bundled_models(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CourseError, match=r"offline.*load_model\(\) with no name.*'course-2l' \(the default\), 'course-4l'"):
        load_model("no-such-org/no-such-model", device="cpu")


def test_bundled_models_load_by_name_and_a_near_miss_is_corrected():
    assert load_model("course-2l", device="cpu").cfg.n_layers == 2
    for wrong in ("course-4L", "course_4l", "course4l"):
        with pytest.raises(CourseError, match="did you mean 'course-4l'"):
            load_model(wrong, device="cpu")
    with pytest.raises(CourseError, match="not a bundled model"):
        bundled_checkpoints("course-3l")


def test_unsupported_architecture_names_the_supported_families(tmp_path):
    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(CourseError, match="GPT-2, GPT-NeoX/Pythia, Llama/Qwen2"):
        load_model(tmp_path, device="cpu")


def _tiny_gpt2(folder, safe=True):
    from transformers import AutoTokenizer

    model = GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    if safe:
        model.save_pretrained(folder)
    else:  # a pickled checkpoint only, as old hub repos have
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    AutoTokenizer.from_pretrained(BUNDLED_MODEL).save_pretrained(folder)


def test_local_folder_loads(tmp_path):
    _tiny_gpt2(tmp_path)
    model = load_model(str(tmp_path), device="cpu", dtype=torch.float64)
    assert model.cfg.d_model == 16 and model.dtype == torch.float64
    logits, cache = model.run_with_cache("x = 1")
    assert logits.shape[-1] == 4096 and cache["pattern", 0].shape[1] == 2


def test_weights_only_from_safetensors(tmp_path):
    _tiny_gpt2(tmp_path, safe=False)
    with pytest.raises(CourseError, match="safetensors"):
        load_model(tmp_path, device="cpu")


def test_no_network_fails_fast_with_the_offline_choice(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(CourseError, match="offline"):
        load_model("gpt2-not-in-any-cache-here", device="cpu")


def test_misspelt_hub_id_online_says_check_the_spelling(monkeypatch):
    import transformers

    from course_utils import loading

    def not_found(name, **kwargs):
        raise OSError(f"{name} is not a local folder and is not a valid model identifier listed on "
                      "'https://huggingface.co/models'")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", not_found)
    with pytest.raises(CourseError, match="check the spelling"):
        load_model("gtp2", device="cpu")


def test_bundled_model_loads_quietly_and_restores_progress_bars(capfd):
    from transformers.utils import logging as hf_logging

    load_model(device="cpu")
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
