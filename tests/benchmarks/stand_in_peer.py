"""A stand-in for diffusers' DPO SDXL script with its ``parse_args``/``main`` shape (the benchmark
imports the script and times its optimiser steps); each step keeps 4 MiB more live, so memory
measurements see it."""

FAKE_PEER = """
import argparse, torch

def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--max_train_steps", type=int)
    return p.parse_known_args(argv)[0]

def main(args):
    w = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([w], lr=0.1)
    held = []
    for _ in range(args.max_train_steps):
        held.append(torch.ones(2**20))  # 4 MiB more live at every step
        (w * w).sum().backward()
        opt.step()
        opt.zero_grad()

if __name__ == "__main__":
    raise SystemExit("the benchmark imports the script; its __main__ block must not run")
"""
