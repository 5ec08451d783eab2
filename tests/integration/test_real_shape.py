"""Real-shape Z-Image: the released widths, one block deep, bfloat16, real worker processes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from common.job import ModelType
from common.status import JobStatus
from producer.client import Client
from producer.conversation import Conversation
from tests.integration.cluster import Cluster
from worker.boot import WARM_UP_PROMPTS
from worker.model_state import footprint
from worker.real_shape import make_real_shape_pipeline, real_configs, real_shape_configs
from zq.demo import left_third_mask

pytestmark = pytest.mark.integration

# The smallest size the worker allows: CPUs without bfloat16 instructions (AVX2 only)
# run bfloat16 convolutions on a slow path, where the real-width VAE takes over a minute
# to decode 64x64 and ~3 s for 16x16.
SIDE = 16
# Each prompt a worker has not seen costs it ~20 s of bfloat16 text encoding (512 padded
# tokens through 2560-wide layers). Every worker's warm-up render has encoded this one
# already, so the jobs take it from the prompt cache.
PROMPT = WARM_UP_PROMPTS[0]


@pytest.fixture(scope="module")
def real_shape_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real-shape checkpoint (layers=1, bfloat16), written by ``zq make-tiny-models``."""
    made = subprocess.run(
        [sys.executable, "-m", "zq", "make-tiny-models", str(tmp_path_factory.mktemp("models")),
         "--real-shape"],
        capture_output=True, text=True, timeout=240,
    )
    assert made.returncode == 0, made.stderr
    listed = dict(line.split("\t") for line in made.stdout.splitlines())
    assert sorted(listed) == ["base", "edit", "turbo"]
    assert len(set(listed.values())) == 1, "the three model types share one checkpoint"
    return Path(listed["turbo"])


def test_shipped_configs_are_the_released_ones() -> None:
    configs = real_configs()
    transformer, vae, text = configs["transformer"], configs["vae"], configs["text_encoder"]
    assert transformer["dim"] == 3840
    assert transformer["n_heads"] == transformer["n_kv_heads"] == 30
    head_dim = transformer["dim"] // transformer["n_heads"]
    assert head_dim * transformer["n_heads"] == transformer["dim"]
    assert head_dim == sum(transformer["axes_dims"]) == 128
    assert transformer["axes_dims"] == [32, 48, 48]
    assert transformer["axes_lens"] == [1536, 512, 512]
    assert (transformer["n_layers"], transformer["n_refiner_layers"]) == (30, 2)
    assert transformer["rope_theta"] == 256.0
    assert transformer["qk_norm"] is True
    assert transformer["cap_feat_dim"] == text["hidden_size"] == 2560
    assert transformer["in_channels"] == vae["latent_channels"] == 16
    assert vae["block_out_channels"] == [128, 256, 512, 512]
    assert vae["layers_per_block"] == 2
    assert (vae["scaling_factor"], vae["shift_factor"]) == (0.3611, 0.1159)
    assert not vae["use_quant_conv"] and not vae["use_post_quant_conv"]
    assert text["num_hidden_layers"] == 36
    assert (text["num_attention_heads"], text["num_key_value_heads"]) == (32, 8)
    assert text["head_dim"] == 128 and text["intermediate_size"] == 9728
    assert text["vocab_size"] == 151936
    assert configs["scheduler"] == {"num_train_timesteps": 1000, "shift": 3.0,
                                    "use_dynamic_shifting": False}
    # Built at full depth (on the meta device: no memory), the transformer has the
    # published parameter count of Z-Image-Turbo's.
    full = make_real_shape_pipeline(layers=None, device="meta")
    assert sum(p.numel() for p in full.transformer.parameters()) == 6_154_908_736
    assert full.text_encoder.config.vocab_size == 151936


def test_reduced_depth_keeps_every_width(real_shape_checkpoint: Path) -> None:
    def config(component: str) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(
            (real_shape_checkpoint / component / "config.json").read_text())
        return loaded

    released = real_configs()
    transformer, text, vae = config("transformer"), config("text_encoder"), config("vae")
    assert transformer == {**transformer, **released["transformer"],
                           "n_layers": 1, "n_refiner_layers": 1}
    assert text["num_hidden_layers"] == 2
    for width in ("hidden_size", "intermediate_size", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings"):
        assert text[width] == released["text_encoder"][width], width
    assert text["rope_parameters"] == {"rope_type": "default", "rope_theta": 1_000_000.0}
    assert text["vocab_size"] < 1000  # the byte-level tokenizer's ids
    assert vae == {**vae, **released["vae"]}
    weights = sum(f.stat().st_size for f in real_shape_checkpoint.rglob("*.safetensors"))
    assert 1.5e9 < weights < 1.8e9  # bfloat16: 2 bytes per parameter


def test_real_shape_conversation_in_bfloat16_on_real_workers(
        cluster: Cluster, client: Client, real_shape_checkpoint: Path) -> None:
    env = {"ZQ_DTYPE": "bfloat16", "ZQ_WARMUP_SIZE_PX": str(SIDE),
           **{f"ZQ_MODEL_{model.value.upper()}": str(real_shape_checkpoint)
              for model in ModelType}}
    chat = Conversation(client, width=SIDE, height=SIDE, seed=3, steps=2)
    chat.say(PROMPT)
    chat.say(PROMPT, mask=left_third_mask(SIDE))
    # Without guidance: with it, the negative prompt would cost another ~40 s of encoding.
    chat.refine(guidance=0.0)
    # Children wait for their parents, so all three workers may load at once.
    for model in ModelType:
        cluster.start(model, wait=False, extra_env=env)
    records = [turn.wait(240) for turn in chat.turns]

    assert [r.status for r in records] == [JobStatus.SUCCEEDED] * 3, [r.error for r in records]
    assert [r.spec.model for r in records] == [ModelType.TURBO, ModelType.EDIT, ModelType.BASE]
    expected = _expected_parameter_bytes()
    for record in records:
        manifest = client.manifest(record.spec.job_id)
        model = manifest["model"]
        assert model["type"] == record.spec.model.value
        assert model["dtype"] == "bfloat16"
        assert model["parameter_bytes"] == expected
        with Image.open(io.BytesIO(client.result(record.spec.job_id))) as image:
            assert image.size == (SIDE, SIDE)
            assert any(low < high for low, high in image.getextrema()), "NaNs decode flat"


def _expected_parameter_bytes() -> dict[str, dict[str, int]]:
    """Bytes per dtype of the modules a layers=1 checkpoint holds, built on the meta device."""
    built = make_real_shape_pipeline(layers=1, device="meta")
    modules = {name: part for name, part in built.components.items()
               if isinstance(part, torch.nn.Module)}
    expected = {name: dict(part.bytes_by_dtype) for name, part in footprint(
        {name: [*m.parameters(), *m.buffers()] for name, m in modules.items()}).items()}
    transformer_params = sum(p.numel() for p in built.transformer.parameters())
    assert built.transformer.config.dim == real_shape_configs(1)["transformer"]["dim"] == 3840
    assert expected["transformer"] == {"bfloat16": 2 * transformer_params}
    assert list(expected["vae"]) == ["bfloat16"]
    # transformers keeps the rotary inverse frequencies in float32: those buffers only.
    rotary = sum(b.nbytes for b in built.text_encoder.rotary_emb.buffers())
    assert expected["text_encoder"]["float32"] == rotary == 2 * 64 * 4
    assert sorted(expected["text_encoder"]) == ["bfloat16", "float32"]
    return expected
