"""The speculative-decoding engine shared by every method (DESIGN.md §3 "Engine", issue 4).

Methods propose; the engine verifies, accepts, commits and times. Modules: `acceptance` (pure
acceptance rules), `tree` (flattened candidate trees), `verify` (chain and tree verification),
`decoder` (reusable decoders a method plugs a proposer into).
"""

from specbench.engine.acceptance import (accept_greedy, accept_speculative, accept_tree, accept_tree_greedy,
                                         residual)
from specbench.engine.decoder import (ChainSpeculativeDecoder, SpeculativeDecoder, TokenHistory,
                                      TreeSpeculativeDecoder)
from specbench.engine.tree import DraftTree, TreeBatch
from specbench.engine.verify import ChainResult, Proposal, TreeResult, accept_chain, verify_chain, verify_tree

__all__ = ["accept_greedy", "accept_speculative", "accept_tree", "accept_tree_greedy", "residual",
           "ChainSpeculativeDecoder", "SpeculativeDecoder", "TokenHistory", "TreeSpeculativeDecoder",
           "DraftTree", "TreeBatch", "ChainResult", "Proposal", "TreeResult", "accept_chain", "verify_chain",
           "verify_tree"]
