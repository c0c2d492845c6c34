"""Shared pytest setup. The local control plane's fixtures (``dev_cluster``, ``kube``,
``namespace``) and wait helpers live in support.cluster; they start nothing until a
test asks for them."""

pytest_plugins = ["support.cluster", "support.operator"]
