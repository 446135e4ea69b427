"""The ``.etm`` format: zip records, member names, metadata.json and its schema, reader, writer.

>>> from etm_compat.archive import MemberSpec, open_archive, write_archive  # doctest: +SKIP

See docs/FORMAT.md for the layout.
"""

from __future__ import annotations

from etm_compat.archive.read import (
    EtmArchive,
    MemberInfo,
    Problem,
    check_member_name,
    is_archive,
    open_archive,
    role_of,
)
from etm_compat.archive.write import ArchiveWriteResult, MemberSpec, WrittenMember, write_archive

__all__ = [
    "ArchiveWriteResult",
    "EtmArchive",
    "MemberInfo",
    "MemberSpec",
    "Problem",
    "WrittenMember",
    "check_member_name",
    "is_archive",
    "open_archive",
    "role_of",
    "write_archive",
]
