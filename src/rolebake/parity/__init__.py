"""`rolebake parity`: apply the same roles to a VM, snapshot both sides, diff them.

`qemu` boots the local VM from the disk `rolebake.rootfs` prepares (an existing one is
reached through `rolebake.provision.target.SSHTarget`), `snapshot` records the state of a
testinfra host, `diff` classifies what differs, `run` ties them together. Nothing here prints
or exits; the CLI renders `ParityReport` and maps errors to exit codes.
"""
