"""Data: sources -> canonical records -> token ids -> batches (see docs/data-formats.md).

    records, report = load_records(cfg.data, "preference")        # rlhf.data.load
    examples = encode_records(records, tokenizer, cfg.data, report)  # rlhf.data.tokenize
    batch = PreferenceCollator(tokenizer.pad_token_id)(examples[:8])  # rlhf.data.collate
    logits = model(**model_inputs(batch)).logits
"""

from rlhf.data.collate import (
    PackingCollator,
    PadCollator,
    PreferenceCollator,
    PromptCollator,
    block_causal_mask,
    model_inputs,
    pack_examples,
    position_ids_from_mask,
)
from rlhf.data.config import DataConfig
from rlhf.data.errors import DataError, SkipReport
from rlhf.data.load import load_records, load_train_eval, split_eval
from rlhf.data.records import (
    PreferenceRecord,
    PromptRecord,
    RankedRecord,
    Record,
    SFTRecord,
    UnpairedRecord,
    is_conversational,
)
from rlhf.data.tokenize import (
    DEFAULT_CHAT_TEMPLATE,
    encode_preference,
    encode_prompt,
    encode_records,
    encode_sft,
    encode_unpaired,
)

__all__ = [
    "DataConfig",
    "DataError",
    "SkipReport",
    "SFTRecord",
    "PreferenceRecord",
    "RankedRecord",
    "UnpairedRecord",
    "PromptRecord",
    "Record",
    "is_conversational",
    "load_records",
    "load_train_eval",
    "split_eval",
    "DEFAULT_CHAT_TEMPLATE",
    "encode_sft",
    "encode_preference",
    "encode_unpaired",
    "encode_prompt",
    "encode_records",
    "PadCollator",
    "PreferenceCollator",
    "PromptCollator",
    "PackingCollator",
    "pack_examples",
    "block_causal_mask",
    "model_inputs",
    "position_ids_from_mask",
]
