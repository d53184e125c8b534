"""`vllama plan`: FLOPs against torch's own counter, the plan's arithmetic, measured vs assumed figures, the CLI."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from model.branches import AudioBranch, VideoBranch
from model.config import LLAMA2_7B, SIZES
from model.image_encoder import IMAGE_ENCODER_SIZES, FrozenImageEncoder
from model.imagebind import IMAGEBIND_SIZES, ImageBindEncoder
from orchestration import flops


@pytest.fixture
def counted_attention():
    """torch's FlopCounterMode sees attention only as plain matmuls: the math SDPA kernel, no MHA fast path."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(before)


def torch_flops(fn) -> int:
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def fake(build):
    """A module with shapes but no memory (real sizes: 1B-parameter ViT) and the fake mode to run it in."""
    with torch.device("meta"):
        module = build()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        module = module.to_empty(device="cpu")
    return module, mode


@pytest.mark.parametrize("image_size,imagebind_size", [("tiny", "tiny"), ("eva_vit_g", "huge")])
def test_encoder_flops_equal_torch_flop_counter(counted_attention, image_size, imagebind_size):
    enc, mode = fake(lambda: FrozenImageEncoder(IMAGE_ENCODER_SIZES[image_size]))
    with mode:
        measured = torch_flops(lambda: enc(torch.zeros(2, 3, 224, 224))) / 2  # per frame
    assert measured == pytest.approx(flops.image_encoder_flops(IMAGE_ENCODER_SIZES[image_size]), rel=1e-9)

    cfg = IMAGEBIND_SIZES[imagebind_size]
    ib, mode = fake(lambda: ImageBindEncoder(cfg))
    with mode:
        vision = torch_flops(lambda: ib.encode_vision(torch.zeros(2, 3, 224, 224))) / 2
        audio = torch_flops(lambda: ib.encode_audio(torch.zeros(1, 2, 1, 128, 204))) / 2  # per 2-s clip
    assert vision == pytest.approx(flops.imagebind_vision_flops(cfg), rel=1e-9)
    assert audio == pytest.approx(flops.imagebind_audio_flops(cfg), rel=1e-9)
    if image_size == "eva_vit_g":  # the brief's figures: ViT-g + Q-Former ~0.52-0.53 TFLOP, ImageBind-H ~0.33
        assert measured / 1e12 == pytest.approx(0.533, abs=0.001)
        assert vision / 1e12 == pytest.approx(0.335, abs=0.001)


def test_branch_flops_equal_torch_flop_counter(counted_attention):
    size = SIZES["7b"]
    vl, mode = fake(lambda: VideoBranch(size.vl, size.llm.hidden))
    with mode:
        video = torch_flops(lambda: vl(torch.zeros(1, 8, 32, size.vl.encoder_width)))
    assert video == pytest.approx(flops.branch_flops(size.vl, 8 * 32, size.llm.hidden), rel=1e-9)
    al, mode = fake(lambda: AudioBranch(size.al, size.llm.hidden))
    with mode:
        audio = torch_flops(lambda: al(torch.zeros(1, 8, size.al.encoder_width)))
    assert audio == pytest.approx(flops.branch_flops(size.al, 8, size.llm.hidden), rel=1e-9)


def test_frozen_llm_forward_and_backward_equal_autograd(counted_attention):
    """Frozen weights, gradients only to the input embeddings: autograd does ~2x the forward, not 3x."""
    from transformers import LlamaForCausalLM

    from model.tiny import llama_config

    llm = SIZES["tiny"].llm
    config = llama_config(llm)
    config._attn_implementation = "eager"  # plain matmuls, which the counter sees
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).requires_grad_(False)
    tokens = 40
    embeds = torch.randn(1, tokens, llm.hidden, requires_grad=True)
    labels = torch.randint(0, llm.vocab_size, (1, tokens))
    forward = torch_flops(lambda: model(inputs_embeds=embeds))
    both = torch_flops(lambda: model(inputs_embeds=embeds, labels=labels).loss.backward())
    assert forward == pytest.approx(sum(flops.llm_flops(llm, tokens)), rel=1e-9)
    assert both == pytest.approx(flops.frozen_llm_train_flops(llm, tokens), rel=1e-9)
    assert both / forward < 2.1  # full training (weights too) would be ~3x
    assert embeds.grad is not None and all(p.grad is None for p in model.parameters())


def test_frozen_7b_costs_about_4_flops_per_parameter_per_token():
    params = LLAMA2_7B.layers * (4 * 4096**2 + 3 * 4096 * 11008) + 4096 * 32000  # matmul weights + lm_head
    per_token = flops.frozen_llm_train_flops(LLAMA2_7B, 65) / 65
    assert per_token / params == pytest.approx(4.0, abs=0.05)  # short stage-1 sequences: attention is ~1 %
