"""The ``.etm`` archive: one import point for the writer and the safe reader.

>>> from etm_compat.archive import MemberSpec, open_archive, write_archive  # doctest: +SKIP

See docs/FORMAT.md for the layout; :mod:`etm_compat.archive_write` and
:mod:`etm_compat.archive_read` hold the implementations, :mod:`etm_compat.zipfmt` the zip
records both use and :mod:`etm_compat.archive_names` the member-name rules.
"""

from __future__ import annotations

from etm_compat.archive_read import (
    EtmArchive,
    MemberInfo,
    Problem,
    check_member_name,
    open_archive,
    role_of,
    verify_archive,
)
from etm_compat.archive_write import ArchiveWriteResult, MemberSpec, WrittenMember, write_archive

__all__ = [
    "ArchiveWriteResult",
    "EtmArchive",
    "MemberInfo",
    "MemberSpec",
    "Problem",
    "WrittenMember",
    "check_member_name",
    "open_archive",
    "role_of",
    "verify_archive",
    "write_archive",
]
