"""The engine's shared layer: configs from forms and --set, device and dtype, loading, the held-out split."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from tests.training.conftest import marker_pairs, save_adapter, write_jsonl
from training.engine.common import (
    is_adapter,
    load_policy,
    load_reward_model,
    load_rows,
    load_tokenizer,
    lora_config,
    pick_device,
    resolve_dtype,
    split_dataset,
)
from training.engine.config import BaseConfig, DPOConfig, RewardConfig

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def test_from_dict_turns_form_strings_into_field_types():
    config = DPOConfig.from_dict(
        {"learning_rate": "3e-4", "max_steps": " 20 ", "use_lora": "off", "beta": "0.2", "resume": "true"}
    )

    assert (config.learning_rate, config.max_steps, config.use_lora, config.beta, config.resume) == (
        3e-4,
        20,
        False,
        0.2,
        True,
    )
    assert config.lora_r == 16  # untouched fields keep their defaults
    assert DPOConfig.from_dict(config.to_dict()) == config


def test_from_dict_takes_json_values_as_they_are():
    config = RewardConfig.from_dict({"max_steps": 5.0, "num_train_epochs": 2, "use_margin": False})

    assert (config.max_steps, config.num_train_epochs, config.use_margin) == (5, 2.0, False)
    assert isinstance(config.num_train_epochs, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"learning_rate": "-1"}, "learning_rate: must be > 0, got -1.0"),
        ({"learning_rat": "0.1"}, "learning_rat: unknown setting for BaseConfig"),
        ({"max_steps": "ten"}, "max_steps: must be an integer, got 'ten'"),
        ({"max_steps": 2.5}, "max_steps: must be an integer, got 2.5"),
        ({"max_steps": "0"}, "max_steps: must be > 0, or -1 to use epochs, got 0"),
        ({"use_lora": "maybe"}, "use_lora: must be true or false, got 'maybe'"),
        ({"use_lora": 1}, "use_lora: must be true or false, got 1"),
        ({"eval_fraction": "nan"}, "eval_fraction: must be a finite number, got 'nan'"),
        ({"eval_fraction": "1"}, "eval_fraction: must be in [0, 1), got 1.0"),
        ({"dtype": "int8"}, "dtype: must be one of auto, float32, bfloat16, float16, got 'int8'"),
        ({"model_name_or_path": 7}, "model_name_or_path: must be a string, got 7"),
    ],
)
def test_from_dict_refuses_bad_values_naming_the_field(data, message):
    with pytest.raises(ValueError) as error:
        BaseConfig.from_dict(data)
    assert str(error.value).startswith(message)


def test_stage_configs_check_their_own_fields():
    with pytest.raises(ValueError, match=r"^beta: must be > 0, got 0.0$"):
        DPOConfig.from_dict({"beta": "0"})
    with pytest.raises(ValueError, match=r"^loss_type: must be one of sigmoid, "):
        DPOConfig(loss_type="nonsense")
    with pytest.raises(ValueError, match=r"^use_margin: unknown setting for DPOConfig"):
        DPOConfig.from_dict({"use_margin": "true"})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"loss_type": "exo_pair"}, "label_smoothing: must be > 0 for loss_type=exo_pair"),
        ({"loss_type": "robust"}, "label_smoothing: must be > 0 for loss_type=robust (at 0 it is exactly sigmoid"),
        ({"loss_type": "robust", "label_smoothing": "0.5"}, "label_smoothing: must be in [0, 0.5), got 0.5"),
        ({"loss_type": "exo_pair", "label_smoothing": "-0.1"}, "label_smoothing: must be in [0, 0.5), got -0.1"),
        ({"label_smoothing": "0.1"}, "label_smoothing: must be 0 for loss_type=sigmoid, which ignores it"),
        ({"loss_type": "hinge", "label_smoothing": "0.1"}, "label_smoothing: must be 0 for loss_type=hinge"),
    ],
)
def test_dpo_label_smoothing_is_checked_against_the_loss_type(data, message):
    with pytest.raises(ValueError) as error:
        DPOConfig.from_dict(data)
    assert str(error.value).startswith(message), error.value


def test_dpo_takes_label_smoothing_where_its_loss_reads_it():
    assert DPOConfig.from_dict({"loss_type": "robust", "label_smoothing": "0.1"}).label_smoothing == 0.1
    assert DPOConfig.from_dict({"loss_type": "exo_pair", "label_smoothing": "1e-3"}).label_smoothing == 0.001


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_picks_the_cpu_and_float32_without_a_gpu():
    device = pick_device()

    assert device.type == "cpu"
    assert resolve_dtype("auto", device) == torch.float32
    assert resolve_dtype("bfloat16", device) == torch.bfloat16  # asked for explicitly, it is given


def test_tokenizer_without_pad_token_pads_with_eos(tiny, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny.policy)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)

    loaded = load_tokenizer(tmp_path, padding_side="left")

    assert loaded.pad_token == loaded.eos_token == "</s>"
    assert loaded.padding_side == "left"


def test_lora_config_takes_all_linear_or_named_modules():
    assert lora_config(BaseConfig(), "CAUSAL_LM").target_modules == "all-linear"
    named = lora_config(BaseConfig(lora_target_modules="q_proj, v_proj", lora_r=4, lora_alpha=8), "SEQ_CLS")

    assert set(named.target_modules) == {"q_proj", "v_proj"}
    assert (named.r, named.lora_alpha, named.task_type) == (4, 8, "SEQ_CLS")


@pytest.fixture
def adapter(tiny, tmp_path):
    return save_adapter(tiny.policy, tmp_path / "adapter")


def test_loads_an_adapter_directory_onto_its_base(tiny, adapter):
    ids = torch.tensor([[1, 10, 20, 30, 40]])
    base = AutoModelForCausalLM.from_pretrained(tiny.policy).eval()
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny.policy), adapter).eval()

    merged = load_policy(BaseConfig(model_name_or_path=str(adapter))).eval()
    trainable = load_policy(BaseConfig(model_name_or_path=str(adapter)), is_trainable=True)

    assert is_adapter(adapter) and not is_adapter(tiny.policy)
    assert not isinstance(merged, PeftModel)  # merged for inference
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected(ids).logits)
        assert not torch.allclose(merged(ids).logits, base(ids).logits)
    assert isinstance(trainable, PeftModel)  # kept as an adapter to continue training
    assert {name for name, p in trainable.named_parameters() if p.requires_grad} == {
        name for name, _ in trainable.named_parameters() if "lora_" in name
    }


def test_a_prompt_tuning_policy_is_sampled_but_refused_for_further_training_naming_why(tiny, tmp_path):
    from peft import PromptTuningConfig, get_peft_model

    prompt = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny.policy), PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=4))  # fmt: skip
    prompt.save_pretrained(tmp_path / "prompt")
    config = BaseConfig(model_name_or_path=str(tmp_path / "prompt"))

    assert isinstance(load_policy(config), PeftModel)  # for sampling: its virtual tokens have nothing to merge into
    with pytest.raises(ValueError, match="prompt-tuning adapter.*start the round from its base"):
        load_policy(config, is_trainable=True)


def test_reward_model_without_a_pad_id_reads_each_row_at_its_last_real_token(tiny, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny.reward)
    model.config.pad_token_id = None  # transformers' own classifier refuses a batch then
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny.reward).save_pretrained(tmp_path)

    loaded = load_reward_model(tmp_path, torch.device("cpu"))
    ids = torch.tensor([[1, 10, 20, 30], [1, 10, 20, 0]])
    scores = loaded(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])).logits

    torch.testing.assert_close(scores[1], loaded(ids[1:, :3]).logits[0])
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_load_rows_keeps_what_the_trainer_needs(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", marker_pairs(6))

    rows = load_rows(data, ["prompt", "chosen", "rejected"])

    assert rows.column_names == ["prompt", "chosen", "rejected", "prompt_id"]
    assert len(rows) == 6
    with pytest.raises(ValueError, match="missing column"):
        load_rows(data, ["messages"])


def test_split_holds_out_whole_prompts_by_seed(tmp_path):
    # A ranking gives several pairs per prompt: here two pairs for each of 20 prompts.
    rows = [{"prompt": "Q", "chosen": f"A{i}", "rejected": "B", "prompt_id": f"p{i // 2}"} for i in range(40)]
    pairs = load_rows(write_jsonl(tmp_path / "pairs.jsonl", rows), ["prompt", "chosen", "rejected"])

    train, held_out = split_dataset(pairs, 0.25, seed=1)
    again, held_out_again = split_dataset(pairs, 0.25, seed=1)
    _, other = split_dataset(pairs, 0.25, seed=2)

    assert (len(train), len(held_out)) == (30, 10)  # 5 of 20 prompts, with both of their pairs
    assert "prompt_id" not in train.column_names
    held_prompts = {int(answer[1:]) // 2 for answer in held_out["chosen"]}
    assert len(held_prompts) == 5
    assert not held_prompts & {int(answer[1:]) // 2 for answer in train["chosen"]}
    assert held_out["chosen"] == held_out_again["chosen"] and train["chosen"] == again["chosen"]
    assert held_out["chosen"] != other["chosen"]
    assert split_dataset(pairs, 0.0, seed=1)[1] is None
