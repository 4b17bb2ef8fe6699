"""Count all-equal groups (G = 2..64, 5 random non-dyadic values each) whose advantage is not 0.

Usage: python benchmarks/all_equal_groups.py   (issue 14: 243 / 112 / 179 before the float64 statistics, 0 after)
"""
import random, torch
from rewardlab.rl.advantages import grpo_outcome, grpo_process, dr_grpo, rloo, whiten
from rewardlab.rewards.refine import normed
rng = random.Random(0)
cnt = {"grpo_outcome": 0, "grpo_process": 0, "dr_grpo": 0, "rloo": 0, "normed": 0, "whiten": 0, "normed_tensor32": 0}
total = 0
for G in range(2, 65):
    for _ in range(5):
        v = torch.tensor(rng.uniform(-3, 3), dtype=torch.float32).item()  # a float32 value
        total += 1
        mask = torch.ones(G, 4)
        R = torch.full((G,), v, dtype=torch.float32)
        for name, fn in (("grpo_outcome", grpo_outcome), ("dr_grpo", dr_grpo), ("rloo", rloo)):
            if fn(R, G, mask).abs().max().item() != 0:
                cnt[name] += 1
        d = rng.uniform(-3, 3)                     # an arbitrary Python float (double)
        steps = [[d, d] for _ in range(G)]
        if grpo_process(steps, [[1, 3]] * G, G, mask).abs().max().item() != 0:
            cnt["grpo_process"] += 1
        if max(abs(x) for r in normed(steps) for x in r) != 0:
            cnt["normed"] += 1
        if normed(torch.full((G,), v)).abs().max().item() != 0:
            cnt["normed_tensor32"] += 1
        x = torch.full((G, 4), v)
        w = whiten(x, mask)
        if w.abs().max().item() != 0:
            cnt["whiten"] += 1
print(f"all-equal groups: {total}")
for k, c in cnt.items():
    print(f"  {k:13s} non-zero advantage: {c}")
