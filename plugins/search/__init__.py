"""Built-in search policies."""

from reason import hookimpl

from .best_of_n import BestOfN
from .greedy import Greedy
from .self_consistency import SelfConsistency


@hookimpl
def reason_register_searches(register):
    register("greedy", Greedy)
    register("self-consistency", SelfConsistency)
    register("best-of-n", BestOfN)
