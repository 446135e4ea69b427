"""Tokenizer files, one module per format, detected by content (:mod:`.detect`).

Each format module offers ``sniff(head) -> bool`` (a cheap decision on the first
``TOKENIZER_SNIFF_BYTES`` bytes) and ``parse(path, data) -> TokenizerInfo`` (a full, bounded read).
"""
