"""`pg_doorman import-pgbouncer pgbouncer.ini [--userlist userlist.txt] [-o pg_doorman.yaml]`: translate a
PgBouncer configuration into a pgdoorman YAML config.

Every PgBouncer setting read ends up in the output: as a pgdoorman setting with a comment naming its source
line ("translated"), as a close pgdoorman setting with the difference explained ("approximated"), or as a
comment saying why it has no counterpart ("not translated"). PgBouncer defaults that differ from
pgdoorman's are written out explicitly so the translated pooler behaves like the source one. The result is
loaded with the real loader before it is written (a config that does not load is a bug, reported as such).
Malformed input (a line that is neither a section, a setting nor an %include, a bad connection string, an
unreadable or malformed userlist) exits with status 1 and `file:line: why`.

The modules, in the order the command uses them: reading.py (the ini and userlist files), values.py
(PgBouncer's value syntax), translator.py (the state: source settings and the output being built),
general.py, auth.py and pools.py (the translation, section by section), not_translated.py (why a setting
has no counterpart), output.py and render.py (the output model and its YAML), command.py (the command).

Docs: docs/migrating-from-pgbouncer.md (the translation table).
"""

from pgdoorman.import_pgbouncer.command import build_parser, main, translate
from pgdoorman.import_pgbouncer.reading import ImportFailed, Ini, Setting, UserEntry, read_ini, read_userlist

__all__ = ["ImportFailed", "Ini", "Setting", "UserEntry", "build_parser", "main", "read_ini", "read_userlist",
           "translate"]
