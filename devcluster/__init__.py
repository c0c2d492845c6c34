"""The local control plane: a real kube-apiserver, etcd, controller manager and scheduler built
from their Go modules, kwok simulating a mixed fleet, and a local executor that really runs the
pods of one x86 node class. Used by the integration tests and by ``infleet dev``.

Layers: ``tools`` builds and locates the binaries; ``fleet`` and ``podspec`` are pure
translations (profile -> Node objects, Pod -> process spec); ``pki``, ``cluster`` and
``executor`` do the I/O.
"""
