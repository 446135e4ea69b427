"""The ``.etm`` format: zip records, member names, metadata.json and its schema, reader, writer.

>>> from etm_compat.archive import MemberSpec, open_archive, write_archive  # doctest: +SKIP

See docs/FORMAT.md for the layout (version 1) and its version 2 (several programs, weight roles,
processor configs, modalities).
"""

from __future__ import annotations

from etm_compat.archive.layout import ArchiveLayout, ModalityRecord, ProgramRecord, WeightsRecord
from etm_compat.archive.names import (
    processor_member_names,
    program_member,
    program_member_names,
)
from etm_compat.archive.plan import MemberSpec, required_version, version_features
from etm_compat.archive.read import (
    EtmArchive,
    MemberInfo,
    Problem,
    check_member_name,
    is_archive,
    open_archive,
    role_of,
)
from etm_compat.archive.write import ArchiveWriteResult, WrittenMember, write_archive

__all__ = [
    "ArchiveLayout",
    "ArchiveWriteResult",
    "EtmArchive",
    "MemberInfo",
    "MemberSpec",
    "ModalityRecord",
    "Problem",
    "ProgramRecord",
    "WeightsRecord",
    "WrittenMember",
    "check_member_name",
    "is_archive",
    "open_archive",
    "processor_member_names",
    "program_member",
    "program_member_names",
    "required_version",
    "role_of",
    "version_features",
    "write_archive",
]
