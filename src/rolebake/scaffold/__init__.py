"""Starting testinfra suites written from what the roles did, as `goss autoadd` does for a host.

Two halves. `record` provisions the layer once more, the way a `--no-cache`
build does, but moves no tag and keeps no image: it returns the provisioner's
own task results and the sha256 of every file whose content the roles copied
verbatim. `render` is a pure function from such a recording to the source of a
testinfra file, so it is unit-tested with recorded results (JSON fixtures).

What becomes a check:

- packages installed (apt/package/dnf/yum tasks; chef `package[...]`),
- files, templates, directories and links written (copy/template/file/lineinfile):
  existence, kind, mode, owner and group; sha256 for copies (static content),
  never for content rendered from facts or the build host (`hostbound.py`),
- users and groups created (user/group tasks): existence, uid/gid, shell, home,
- services enabled (service/systemd tasks with `enabled: true`): the systemd
  `.wants` link or the SysV `/etc/rc?.d` link, since a container runs no systemd.

One module per concern: `facts` (task results to facts), `hostbound` (what
content depends on the host, from the tasks as written), `render` (facts to
source, through templates/test_scaffold.py.j2) and `record` (provisioning the
layer, measuring it, keeping the recording as JSON).
"""

from __future__ import annotations

from rolebake.scaffold.facts import Facts, FileFact, UserFact, facts_from
from rolebake.scaffold.record import Recording, record, save
from rolebake.scaffold.render import render

__all__ = ["Facts", "FileFact", "Recording", "UserFact", "facts_from", "record", "render",
           "save"]
