"""Format facts in one place: magic bytes, header offsets, member names, versions.

Sources: executorch's ``program.fbs``/``_program.py`` and ``flat_tensor.fbs``/``serialize.py``
(see docs/FORMAT.md and the research notes).
"""

from __future__ import annotations

from typing import Final

#: The version of etm-compat (the package's ``__version__``; recorded in archives it writes).
VERSION: Final = "0.1.0"

# --- .pte (ExecuTorch program FlatBuffer) -----------------------------------------------------
PTE_IDENTIFIER: Final = b"ET12"
PTE_IDENTIFIER_OFFSET: Final = 4
PTE_EXTENDED_MAGIC: Final = b"eh00"
PTE_EXTENDED_OFFSET: Final = 8
#: The C++ runtime reads this many head bytes before anything else.
PTE_HEAD_BYTES: Final = 64
#: Extended header length before v1.0 (no segment_data_size) and since.
PTE_EXTENDED_LENGTHS: Final = (24, 32)

# EValue union type tags (program.fbs KernelTypes).
EVALUE_NONE: Final = 0
EVALUE_NULL: Final = 1
EVALUE_INT: Final = 2
EVALUE_BOOL: Final = 3
EVALUE_DOUBLE: Final = 4
EVALUE_TENSOR: Final = 5
EVALUE_STRING: Final = 6
EVALUE_INT_LIST: Final = 7
EVALUE_DOUBLE_LIST: Final = 8
EVALUE_BOOL_LIST: Final = 9

# ExtraTensorInfo.location
TENSOR_DATA_LOCATION_SEGMENT: Final = 0
TENSOR_DATA_LOCATION_EXTERNAL: Final = 1

# --- .ptd (ExecuTorch flat-tensor data) ------------------------------------------------------
PTD_IDENTIFIER: Final = b"FT01"
PTD_HEADER_MAGIC: Final = b"FH01"
PTD_HEAD_BYTES: Final = 64

# --- LLM runner metadata keys (extension/llm/runner/constants.h) -----------------------------
KEY_MAX_SEQ_LEN: Final = "get_max_seq_len"
KEY_MAX_CONTEXT_LEN: Final = "get_max_context_len"
KEY_VOCAB_SIZE: Final = "get_vocab_size"
KEY_BOS_ID: Final = "get_bos_id"
KEY_EOS_IDS: Final = "get_eos_ids"
KEY_USE_KV_CACHE: Final = "use_kv_cache"
KEY_USE_SDPA_WITH_KV_CACHE: Final = "use_sdpa_with_kv_cache"
KEY_ENABLE_DYNAMIC_SHAPE: Final = "enable_dynamic_shape"
KEY_N_LAYERS: Final = "get_n_layers"
#: Names written by export tools of v0.2/v0.3 that later runners no longer read.
LEGACY_KEYS: Final = ("get_eos_id", "get_n_bos", "get_n_eos", "append_eos_to_prompt")
#: Defaults that export_llama of v0.4-v1.0 wrote into every program unless overridden.
LEGACY_DEFAULT_BOS_ID: Final = 1
LEGACY_DEFAULT_EOS_IDS: Final = (2,)

# --- hashing ---------------------------------------------------------------------------------
#: From this many bytes on, a sha256 runs in a helper thread beside the other work on the same
#: bytes (hashlib releases the GIL): an archive member's CRC and copy, a tokenizer's parse.
#: Below it the handoff costs more than the overlap saves, with a core to spare or not
#: (``benchmarks/bench_archive.py``, "hash beside the copy"; BENCHMARKS.md).
BACKGROUND_HASH_MIN: Final = 1024 * 1024
#: What was read of a file changed this recently (seconds) is not remembered by its stamp (a
#: scan's folder reads, a run's parsed configs): a file rewritten again within the file system's
#: timestamp granularity would keep its stamp (the "racy" case git's index also guards against).
RACY_SECONDS: Final = 2

# --- tokenizer formats -----------------------------------------------------------------------
TOKENIZER_FORMATS: Final = ("hf_json", "tekken", "sentencepiece", "tiktoken", "llama2c")
#: File suffixes worth sniffing as tokenizers (when no runner-known name is present).
TOKENIZER_SUFFIXES: Final = (".model", ".json", ".bin", ".tiktoken", ".spm")
#: How many bytes format sniffing reads before deciding.
TOKENIZER_SNIFF_BYTES: Final = 64 * 1024
#: Largest tokenizer file read whole (real ones reach ~20 MiB); larger is refused.
TOKENIZER_MAX_BYTES: Final = 256 * 1024 * 1024
#: Largest tokenizer_config.json / special_tokens_map.json read.
TOKENIZER_CONFIG_MAX_BYTES: Final = 16 * 1024 * 1024
#: Deepest JSON nesting accepted in tokenizer JSON files (real ones stay under 10).
TOKENIZER_JSON_MAX_DEPTH: Final = 64
#: Most vocabulary entries accepted in any tokenizer file.
TOKENIZER_MAX_VOCAB: Final = 4 * 1024 * 1024
#: TokenizerInfo keeps the ordinary vocabulary (for token_id) up to this many entries.
TOKENIZER_VOCAB_LOOKUP_MAX: Final = 300_000
#: Special tokens pytorch_tokenizers' Tiktoken appends when given none (Llama 3 defaults).
TIKTOKEN_NUM_SPECIAL_TOKENS: Final = 256
#: Longest llama2.c token record accepted (and largest max_token_length header).
LLAMA2C_MAX_TOKEN_LENGTH: Final = 64 * 1024

# --- .etm archive -----------------------------------------------------------------------------
ETM_SUFFIX: Final = ".etm"
#: The first bytes of a zip file (a local file header's signature).
ZIP_LOCAL_MAGIC: Final = b"PK\x03\x04"
ETM_FORMAT: Final = "etm"
#: The version of an archive that uses no version-2 feature (what ``pack`` writes for one program).
ETM_FORMAT_VERSION: Final = 1
#: The newest format version this code writes and reads (docs/FORMAT.md, "Version 2").
ETM_LATEST_FORMAT_VERSION: Final = 2
ETM_SUPPORTED_VERSIONS: Final = (1, 2)
MEMBER_METADATA: Final = "metadata.json"
MEMBER_PROGRAM: Final = "model.pte"
MEMBER_WEIGHTS_DIR: Final = "weights/"
MEMBER_TOKENIZER_CONFIG: Final = "tokenizer_config.json"
# --- .etm format version 2: several programs, weight roles, processors, modalities ---
#: The name of the main program (member ``model.pte``) in ``metadata["programs"]``.
MAIN_PROGRAM_NAME: Final = "model"
#: Other programs are ``programs/<name>.pte``; processor configs ``processors/<name>.json``.
MEMBER_PROGRAMS_DIR: Final = "programs/"
MEMBER_PROCESSORS_DIR: Final = "processors/"
#: A tokenizer folder's special-token map (HF), stored beside ``tokenizer_config.json``.
MEMBER_SPECIAL_TOKENS_MAP: Final = "special_tokens_map.json"
#: Program roles; a role outside these is spelled ``x-<name>`` (``x-vad``, ``x-draft``).
ETM_PROGRAM_ROLES: Final = ("model", "preprocessor", "encoder", "decoder")
#: Weight-file roles: a program's own constants, a LoRA foundation shared by several programs,
#: a LoRA adapter, a backend's compiled payload (CUDA/AOTI ``aoti_cuda_blob.ptd``).
ETM_WEIGHTS_ROLES: Final = ("weights", "foundation", "adapter", "backend_blob")
ETM_MODALITIES: Final = ("text", "vision", "audio")
#: Most keys a reader compares for clashes across the data files of each program, summed over
#: the programs (a LoRA deployment of 10 programs over a 7B foundation lists ~10^4).
ETM_MAX_DATA_KEY_REFS: Final = 1 << 20
#: Archive member name of the tokenizer, by detected format.
TOKENIZER_MEMBER_BY_FORMAT: Final = {
    "hf_json": "tokenizer.json",
    "tekken": "tekken.json",
    "sentencepiece": "tokenizer.model",
    "tiktoken": "tokenizer.model",
    "llama2c": "tokenizer.bin",
}
#: Member data alignment: programs and weight files on 16 KiB (mmap on 4 K and 16 K pages).
ETM_ALIGN_MAPPED: Final = 16 * 1024
#: Alignment of every other member's data.
ETM_ALIGN_DEFAULT: Final = 64
#: Upper bounds a reader enforces before trusting anything in an archive.
ETM_MAX_METADATA_BYTES: Final = 4 * 1024 * 1024
ETM_MAX_METADATA_DEPTH: Final = 32
ETM_MAX_MEMBERS: Final = 256
#: Names a tokenizer member may have (the runner's sniff order decides among them).
MEMBER_TOKENIZER_NAMES: Final = ("tokenizer.json", "tekken.json", "tokenizer.model", "tokenizer.bin")

# --- .pte / .ptd reader facts (program.fbs, scalar_type.fbs, flat_tensor.fbs) ----------------
EVALUE_TENSOR_LIST: Final = 10
EVALUE_OPTIONAL_TENSOR_LIST: Final = 11
#: Largest EValue union tag known (KernelTypes); a higher tag is an unknown union type.
EVALUE_MAX_TAG: Final = 11
#: FlatBuffer uoffsets are 32-bit: no program head or data table can exceed this.
FLATBUFFER_MAX_BYTES: Final = 2**31 - 1
#: Minimum length of the .pte eh00 header that carries program_size and segment_base_offset.
PTE_EXTENDED_MIN_LENGTH: Final = 24
#: .ptd FH01 header: magic(4) length(4) flatbuffer_offset(8) flatbuffer_size(8)
#: segment_base_offset(8) segment_data_size(8).
PTD_HEADER_LENGTH: Final = 40
PTD_SUPPORTED_VERSIONS: Final = (0,)
#: ExecuTorch ScalarType (scalar_type.fbs) value -> (enum name, bytes per element or None).
SCALAR_TYPES: Final[dict[int, tuple[str, int | None]]] = {
    0: ("BYTE", 1),
    1: ("CHAR", 1),
    2: ("SHORT", 2),
    3: ("INT", 4),
    4: ("LONG", 8),
    5: ("HALF", 2),
    6: ("FLOAT", 4),
    7: ("DOUBLE", 8),
    11: ("BOOL", 1),
    12: ("QINT8", 1),
    13: ("QUINT8", 1),
    14: ("QINT32", 4),
    15: ("BFLOAT16", 2),
    16: ("QUINT4X2", 1),
    17: ("QUINT2X4", 1),
    22: ("BITS16", 2),
    23: ("FLOAT8E5M2", 1),
    24: ("FLOAT8E4M3FN", 1),
    25: ("FLOAT8E5M2FNUZ", 1),
    26: ("FLOAT8E4M3FNUZ", 1),
    27: ("UINT16", 2),
    28: ("UINT32", 4),
    29: ("UINT64", 8),
}

# --- program kinds, method signatures, delegate payloads (issue 13) ---------------------------
#: Method names the ExecuTorch runners and optimum-executorch give multi-method programs
#: (extension/llm/runner/constants.h; optimum-executorch convert.py).
METHOD_FORWARD: Final = "forward"
METHOD_PREFILL: Final = "prefill"
METHOD_DECODE: Final = "decode"
METHOD_TOKEN_EMBEDDING: Final = "token_embedding"
METHOD_TEXT_DECODER: Final = "text_decoder"
METHOD_VISION_ENCODER: Final = "vision_encoder"
METHOD_AUDIO_ENCODER: Final = "audio_encoder"
METHOD_ENCODER: Final = "encoder"
#: optimum-executorch's multimodal constant methods (utils.save_config_to_constant_methods).
KEY_MODALITY: Final = "modality"
#: Constant method -> the modality whose placeholder token it names.
MEDIA_TOKEN_KEYS: Final = {"vision_token_id": "vision", "audio_token_id": "audio"}
#: The preprocessor_config.json key optimum copies that gives the mel bin count.
KEY_FEATURE_SIZE: Final = "feature_size"
#: program.fbs KernelTypes tag -> name (EValue union types).
EVALUE_TYPE_NAMES: Final = ("None", "Null", "Int", "Bool", "Double", "Tensor", "String",
                            "IntList", "DoubleList", "BoolList", "TensorList",
                            "OptionalTensorList")  # fmt: skip
#: program.fbs TensorShapeDynamism.
TENSOR_SHAPE_DYNAMISM: Final = ("static", "dynamic_bound", "dynamic_unbound")
#: The runtime's kTensorDimensionLimit: no tensor has more dimensions.
TENSOR_MAX_RANK: Final = 16
#: ScalarType value -> torch dtype name (as MethodMeta's dtype maps to torch).
TORCH_DTYPE_NAMES: Final = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64",
                            5: "float16", 6: "float32", 7: "float64", 11: "bool",
                            15: "bfloat16", 27: "uint16", 28: "uint32", 29: "uint64"}  # fmt: skip
SCALAR_TYPE_INTEGERS: Final = frozenset({0, 1, 2, 3, 4, 27, 28, 29})
SCALAR_TYPE_FLOATS: Final = frozenset({5, 6, 7, 15})
# Delegate payloads. XNNPACK (backends/xnnpack/serialization/xnnpack_graph_serialize.py):
# 4 zero bytes, magic XH00, u16 header length, u32 flatbuffer offset, u32 flatbuffer size,
# u32 constant data offset, u64 constant data size; then an XNNGraph FlatBuffer (XN00 from the
# runtime schema, XN01 from the writer's), whose constant_data[].named_key name the data.
BACKEND_XNNPACK: Final = "XnnpackBackend"
XNN_HEADER_MAGIC: Final = b"XH00"
XNN_HEADER_MIN_LENGTH: Final = 30
XNN_FLATBUFFER_IDENTIFIERS: Final = (b"XN00", b"XN01")
#: AOTI backends (backends/aoti/aoti_backend.py): their payload is UTF-8 key lines
#: ("<sha256>_so_blob\n<sha256>_weights_blob"); CUDA's 1.5 payload is the binary weight table
#: that starts with this magic (backends/cuda/cuda_weight_collector.py).
BACKENDS_AOTI: Final = ("CudaBackend", "MetalBackend")
CUDA_WEIGHT_TABLE_MAGIC: Final = b"ETCUDAFQN3"
#: .ptd keys without a layout that name a backend's own artifact, not a weight tensor:
#: AOTI's compiled library and weights blob, CUDA's per-storage weights, Core ML's compiled models.
BACKEND_BLOB_SUFFIXES: Final = ("_so_blob", "_weights_blob")
BACKEND_BLOB_PREFIXES: Final = ("cuda_fqn_weight:", "coreml_", "coreai/")
