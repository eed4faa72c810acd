"""The method's stages, each a function from its inputs to files in its own directory, in the order data
flows: tools -> synth -> filter -> sft -> grpo -> eval. No stage imports another; `mtr.pipeline` runs them
in order and the CLI runs each alone."""
