"""Models: loading (policy, reference, reward model, critic), LoRA, saving, tiny test models.

- :mod:`rlhf.models.config`: ``ModelConfig`` / ``LoraConfig`` config sections.
- :mod:`rlhf.models.load`: ``load_causal_lm``, ``load_reference``, ``load_scalar_model``,
  ``load_tokenizer``, ``save_model``, ``score_last_token`` and friends.
- :mod:`rlhf.models.tiny`: tiny random-weight models and tokenizers for tests and demos.

Submodules are imported explicitly (``from rlhf.models.load import load_causal_lm``), so that
reading a config does not import transformers and peft.
"""
