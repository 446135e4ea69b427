"""The ``.etm`` format: zip records, member names, metadata.json and its schema, reader, writer.

>>> from etm_compat.archive import MemberSpec, open_archive, write_archive  # doctest: +SKIP

See docs/FORMAT.md for the layout (version 1) and its version 2 (several programs, weight roles,
processor configs, modalities). The names below resolve on first use (PEP 562): reading an
archive (:mod:`etm_compat.archive.read`) never loads the writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from etm_compat.lazy import lazy_exports

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ArchiveLayout": "etm_compat.archive.layout",
    "ModalityRecord": "etm_compat.archive.layout",
    "ProgramRecord": "etm_compat.archive.layout",
    "WeightsRecord": "etm_compat.archive.layout",
    "processor_member_names": "etm_compat.archive.names",
    "program_member": "etm_compat.archive.names",
    "program_member_names": "etm_compat.archive.names",
    "MemberSpec": "etm_compat.archive.plan",
    "required_version": "etm_compat.archive.plan",
    "version_features": "etm_compat.archive.plan",
    "EtmArchive": "etm_compat.archive.read",
    "MemberInfo": "etm_compat.archive.read",
    "Problem": "etm_compat.archive.read",
    "check_member_name": "etm_compat.archive.read",
    "is_archive": "etm_compat.archive.read",
    "open_archive": "etm_compat.archive.read",
    "role_of": "etm_compat.archive.read",
    "ArchiveDraft": "etm_compat.archive.write",
    "ArchiveWriteResult": "etm_compat.archive.write",
    "WrittenMember": "etm_compat.archive.write",
    "write_archive": "etm_compat.archive.write",
}

if TYPE_CHECKING:
    from etm_compat.archive.layout import (
        ArchiveLayout,
        ModalityRecord,
        ProgramRecord,
        WeightsRecord,
    )
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
    from etm_compat.archive.write import (
        ArchiveDraft,
        ArchiveWriteResult,
        WrittenMember,
        write_archive,
    )


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = [
    "ArchiveDraft",
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
