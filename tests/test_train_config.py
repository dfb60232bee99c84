"""The typed training config: the same keys as the nested mapping it replaced, strict validation in one
place, mappings and TrainConfig objects interchangeable; and the one cosine schedule."""

import math

import pytest
import yaml

from flyt.errors import FlytError
from flyt.training.config import ReferenceConfig, TrainConfig, config_keys, dump, load_config
from flyt.training.schedule import cosine_lr

# The keys config.yaml and scorer.pt's train config held before the dataclasses (plus 'pair', and
# issue 11's 'pool_buffer' and 'pool_block': the streamed pool).
KEYS = [
    "mode", "name", "pool", "pair", "pool_fraction", "pool_buffer", "pool_block", "scores", "score_columns",
    "score_clip", "score_transform",  # issue 12: robust M-FLYT inputs
    "tasks",
    *(f"reference.{k}" for k in ["kind", "embed_dim", "init", "logit_scale", "optimizer", "beta1", "beta2", "eps",
                                 "weight_decay", "model", "weights", "pool_shards", "precision", "device",
                                 "chunk_size"]),
    *(f"scorer.{k}" for k in ["hidden_dim", "depth", "cosine_init", "init_noise", "weight_decay"]),
    "steps", "warmup_steps", "upstream_batch", "downstream_batch", "scorer_lr", "reference_lr",
    "downstream_logit_scale", "downstream_scale_lr", "update_reference",
    # issue 15: K-step and iterative FLYT
    "inner_steps", "truncate", "reference_advance",
    *(f"iterative.{k}" for k in ["round_steps", "reference_steps", "scs_penalty", "scs_total"]),
    "seed", "out", "checkpoint_every",
    "keep_checkpoint_every", "dtype",
]


def flat(mapping, prefix=""):
    out = []
    for k, v in mapping.items():
        out += flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def test_keys_and_defaults_are_the_nested_mapping_of_before(tmp_path):
    cfg = TrainConfig.from_dict({"pool": "p", "tasks": ["t"]}, tmp_path)
    assert config_keys() == KEYS and flat(cfg.to_dict()) == KEYS
    assert flat(yaml.safe_load(dump(cfg))) == KEYS  # config.yaml keeps the order
    assert cfg.pool == str(tmp_path / "p") and cfg.tasks == [str(tmp_path / "t")] and cfg.name == "flyt"
    assert cfg.pair == "l14" and cfg.reference.logit_scale == math.log(1 / 0.07) and cfg.reference.beta2 == 0.98
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg == cfg.validated()  # validation is idempotent


def test_yaml_overrides_and_python_objects_build_the_same_config(tmp_path):
    (tmp_path / "c.yaml").write_text("pool: pool\ntasks: [a]\nscorer_lr: 1e-3\nreference: {init: random}\n")
    cfg = load_config(tmp_path / "c.yaml", ["reference.beta1=0.5", "pair=b32", "steps=7"])
    built = TrainConfig(pool="pool", tasks="a", scorer_lr=1e-3, pair="b32", steps=7,
                        reference=ReferenceConfig(init="random", beta1=0.5)).validated(tmp_path)
    assert cfg == built and cfg.scorer_lr == 1e-3 and cfg.tasks == [str(tmp_path / "a")]
    assert TrainConfig.from_dict({**cfg.to_dict(), "reference": ReferenceConfig(init="random", beta1=0.5)}) == cfg


@pytest.mark.parametrize("update, message", [
    ({"pair": "h14"}, "config key 'pair' must be b32 or l14, got 'h14'"),
    ({"reference": {"bar": 1}}, "unknown config key 'reference.bar' (known: reference.kind, reference.embed_dim"),
    ({"update_reference": "yes"}, "config key 'update_reference' must be bool, got 'yes'"),
    ({"scorer": {"hidden_dim": "wide"}}, "config key 'scorer.hidden_dim' must be int or null, got 'wide'"),
    ({"tasks": [1]}, "config key 'tasks' must be a list of strings, got [1]"),
    ({"reference": {"kind": "openclip"}}, "config key 'reference.pool_shards' is required for reference.kind openclip"),
])
def test_bad_values_name_the_key(update, message):
    with pytest.raises(FlytError) as info:
        TrainConfig.from_dict({"pool": "p", "tasks": ["t"], **update})
    assert message in str(info.value)


def test_cosine_schedule():
    assert [cosine_lr(s, 1.0, 4, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine_lr(8, 1.0, 4, 12) == pytest.approx(0.5)  # half-way through the decay
    assert cosine_lr(12, 1.0, 4, 12) == pytest.approx(0.0) and cosine_lr(20, 1.0, 4, 12) == pytest.approx(0.0)
    assert cosine_lr(0, 2.0, 0, 10) == 2.0  # no warm-up
