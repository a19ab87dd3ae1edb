"""Two ranks score different numbers of pairs with a partner whose every forward pass is a collective, as a partner
sharded with DeepSpeed ZeRO-3 is. Run by `tests/test_distributed.py`:

    CUDA_VISIBLE_DEVICES="" accelerate launch --multi_gpu --num_processes 2 tests/sync_scoring_job.py \
        --models DIR --out DIR

A forward pre-hook on the partner runs an `all_reduce` (standing in for ZeRO-3's weight gathers) and counts the
passes. Rank 0 scores three GRPO groups (shared-prefix pass plus length buckets: several passes), rank 1 two short
unrelated pairs (fewer passes). With `sync_forward_calls=True` both must finish, with the same number of passes;
without it rank 1 would leave rank 0 waiting in a collective (the process group times out after 60 s).
Each rank writes `DIR/rank{r}.json`: its rewards, its pass counts and the scoring stats.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

# the test suite's offline settings and tiny world (this script's folder is on sys.path when it runs)
from conftest import STATES

import torch
import torch.distributed as dist

from trl_swirl import PartnerReward
from trl_swirl.tiny import load_pretrained

LONG = [" | ".join(STATES[i:4] + STATES[:i]) for i in range(3)]
GENERATED = ["ball at 2 2 vel 1 0", "box at 0 0", "wait", "ball at 3 1 vel 0 -1 | box at 0 0 vel 0 0 | ball"]


def rank_batch(rank: int):
    """(states, completions, actions) of phase fwm for this rank."""
    if rank == 0:
        states = [s for s in LONG for _ in GENERATED]
        return states, GENERATED * len(LONG), ["push ball right"] * len(states)
    return [STATES[0], STATES[3]], ["ball", "jump"], ["wait", "push ball left"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    model, tokenizer = load_pretrained(os.path.join(args.models, "idm"))
    passes = {"count": 0}

    def collective(module, inputs):  # every forward pass is a collective, as under ZeRO-3
        passes["count"] += 1
        dist.all_reduce(torch.ones(1))

    model.register_forward_pre_hook(collective)
    reward = PartnerReward(model, tokenizer, phase="fwm", clip_min=None, sync_forward_calls=True)
    states, completions, actions = rank_batch(rank)
    rewards = reward(completions=completions, state=states, action=actions)
    first = passes["count"]
    # a second call with no pairs at all on rank 1 still joins rank 0's passes
    if rank == 0:
        second = reward(completions=completions[:4], state=states[:4], action=actions[:4])
    else:
        second = reward(completions=[], state=[], action=[])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(
            {"rank": rank, "rewards": rewards, "second": second, "passes_first_call": first,
             "passes_total": passes["count"], "stats": reward.last_stats},
            f,
        )  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
