"""Every diagnostic check, on plain values (a :class:`~.subject.Subject`), archive checks included."""
