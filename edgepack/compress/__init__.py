"""Compression of trained run folders: pruning, 2:4 sparsity, clustering, QAT, PQAT, CQAT, PCQAT, and a
fine-tune control; a compressed run can be compressed further (chains, named source+own).

    from edgepack.compress import compress, TECHNIQUES
    compress("runs/baseline", "prune", "runs/prune-0.8", params={"sparsity": 0.8})

The techniques and their defaults live in one table, edgepack.compress.techniques.TECHNIQUES.
Importing this package does not import TensorFlow.
"""

from edgepack.compress.core import compress, get_technique, resolve_params
from edgepack.compress.invariants import InvariantError
from edgepack.compress.techniques import TECHNIQUES, Technique

__all__ = ["compress", "get_technique", "resolve_params", "InvariantError", "TECHNIQUES",
           "Technique"]
