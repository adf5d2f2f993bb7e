"""Built-in search policies."""

from reason import hookimpl

from .beam import BeamSearch
from .best_of_n import BestOfN
from .compute_optimal import ComputeOptimal
from .deepconf import DeepConf
from .dvts import DVTS
from .greedy import Greedy
from .mcts import MCTS
from .particle_filtering import ParticleFiltering
from .self_consistency import SelfConsistency


@hookimpl
def reason_register_searches(register):
    register("greedy", Greedy)
    register("self-consistency", SelfConsistency)
    register("best-of-n", BestOfN)
    register("beam", BeamSearch)
    register("dvts", DVTS)
    register("mcts", MCTS)
    register("compute-optimal", ComputeOptimal)
    register("deepconf", DeepConf)
    register("particle-filtering", ParticleFiltering)
