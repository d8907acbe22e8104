"""Assistant-only loss, token by token: TRL must train on the assistant's answer and its
end-of-turn token, and on nothing of the user's turn or the template around it."""

from __future__ import annotations

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer


def test_labels_cover_exactly_the_assistant_tokens(cache_dir, tmp_path):
    path = cache_dir / "demo_tiny"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    messages = [{"role": "user", "content": "How much is the Orbit Fan?"},
                {"role": "assistant", "content": "The Orbit Fan costs $42. Happy to help!"}]
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, use_cpu=True,
                     report_to="none", max_length=128, per_device_train_batch_size=1)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=datasets.Dataset.from_list([{"messages": messages}]))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()

    prompt_text = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True,
                                                tokenize=False)
    prompt_len = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    answer = tokenizer(messages[1]["content"], add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    expected = [-100] * prompt_len + answer + [end]
    expected += [-100] * (len(ids) - len(expected))  # the newline after the turn
    assert ids[prompt_len:prompt_len + len(answer) + 1] == answer + [end]
    assert labels == expected
