"""The two names every tokenizer user agrees on: the document separator and the file name.

`<|endoftext|>` precedes every document in the shards and ends generation; the trained
tokenizer is `tokenizer.json` (HF tokenizers' format) in the tokenizer, train and export
directories.
"""

EOT = "<|endoftext|>"
TOKENIZER_JSON = "tokenizer.json"
