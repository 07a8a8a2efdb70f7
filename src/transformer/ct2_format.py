"""The CTranslate2 model directory: what `transformer export` writes and the engine reads.

    OUT_DIR/
      model.bin                # CTranslate2 weights (a TransformerSpec), quantized as asked
      config.json              # CTranslate2's own configuration (special tokens, LayerNorm epsilon)
      shared_vocabulary.json   # the tokens in id order (CTranslate2 takes token strings)
      tokenizer.json           # our tokenizer, copied
      transformer_config.json  # our config.json, copied (metadata: what was exported)
      export.json              # how: quantization, position table size, versions

The exporter (`transformer.export.ct2`, which needs torch and the model code) and the engine
(`transformer.decoding.ct2_engine`) both take these names from here, so that the engine never
imports the exporter. Nothing here imports anything.
"""

from __future__ import annotations

# Written by CTranslate2's `TransformerSpec.save`.
CT2_WEIGHTS_FILE = "model.bin"
CT2_CONFIG_FILE = "config.json"
VOCABULARY_FILE = "shared_vocabulary.json"
# Written by the exporter beside them (the tokenizer keeps its model-directory name).
SOURCE_CONFIG_FILE = "transformer_config.json"
EXPORT_FILE = "export.json"

# Weight types offered by `transformer export --quantization`: int8 (weights int8, other math
# float32 on CPU), int8_float32 (the same, explicitly), int16, float16 (GPU), float32.
QUANTIZATIONS = ("int8", "int8_float32", "int16", "float16", "float32")

# ctranslate2 is an optional dependency: what to do when it is missing.
INSTALL_HINT = "install it with `pip install '.[fast]'` (or `make setup`)"
