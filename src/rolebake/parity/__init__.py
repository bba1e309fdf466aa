"""`rolebake parity`: apply the same roles to a VM, snapshot both sides, diff them.

`vm` prepares and boots the local VM (or describes an existing one), `snapshot` records the
state of a testinfra host, `diff` classifies what differs. Nothing here prints or exits;
the CLI renders `ParityReport` and maps errors to exit codes.
"""
