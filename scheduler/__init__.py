"""Pure placement decisions: node classes, backend and precision per class, capacity plans.

Nothing here performs I/O or imports a backend library: plain data in, plain data out.
"""
