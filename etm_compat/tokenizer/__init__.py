"""One module per tokenizer file format; the public import point is :mod:`etm_compat.tokenizers`.

Each format module offers ``sniff(head) -> bool`` (a cheap decision on the first
``TOKENIZER_SNIFF_BYTES`` bytes) and ``parse(path, data) -> TokenizerInfo`` (a full, bounded read).
"""
