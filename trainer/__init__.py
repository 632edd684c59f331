"""LT-SFT training of language and task diffs (Ansell et al., ACL 2022), on the Hugging
Face Trainer, written in the project's diff format.

Modules:

* :mod:`trainer.recipe`: every knob of a run, with the reference scripts' defaults.
* :mod:`trainer.lt_sft`: the method's rules as tensor functions: maskable parameters,
  global top-K mask selection, gradient masking, re-imposing frozen entries, the L1 pull,
  diff extraction.
* :mod:`trainer.hf`: ``LtSftTrainer`` (a ``transformers.Trainer``) and the two-phase driver.
* :mod:`trainer.models`: the model a job trains (base + head), MLM head handling, MLM loss.
* :mod:`trainer.multisource`: per-batch source-language switching for multi-source tasks.
* :mod:`trainer.jobs`: language diff, task diff (single/multi-source) and full fine-tuning.
* :mod:`trainer.evaluate`: scores of compositions built with the service's composition code.
* :mod:`trainer.data`: readers (CoNLL, CoNLL-U, raw text, classification, SQuAD) and encoders.
* :mod:`trainer.cli`: ``csft train language|task`` and ``csft eval``.
"""
